//! The `general.*` naming keys the reference converter derives from a model id (the
//! directory's name, or `_name_or_path` in config.json): name, organization, basename,
//! finetune, version and size label, plus the size label made from the parameter count
//! when the id gives none.
//!
//! A model id is split at `-` and each part is classed: a version (`v1.2`, `3.1`), a
//! quant type (`Q4_K`, `F16`), a size (`8B`, `8x7B`, `small`; after the first part
//! only), or a finetune word (`chat`, `instruct`, `vision`, `lora`). Leading unclassed
//! words and versions form the basename; later unclassed words join the finetune.

/// What a model id says about the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdComponents {
    /// The id without its organization (`Llama-3.1-8B`).
    pub full_name: Option<String>,
    pub organization: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Basename,
    SizeLabel,
    Finetune,
    Version,
    Type,
}

/// Python's `str.isdecimal()` for one character (ASCII digits; ids are ASCII in
/// practice).
fn is_decimal(c: char) -> bool {
    c.is_ascii_digit()
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_decimal)
}

/// `(v|iter)?\d+([.]\d+)*`, whole part, any case.
fn is_version(part: &str) -> bool {
    let lower = part.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("iter")
        .or_else(|| lower.strip_prefix('v'))
        .unwrap_or(&lower);
    // Without the prefix, the whole part must still be digits with dots.
    let ok = |s: &str| s.split('.').all(is_digits);
    ok(rest) || ok(&lower)
}

/// `i?q\d(_\w)*|b?fp?(16|32)`, whole part, any case.
fn is_quant_type(part: &str) -> bool {
    let lower = part.to_ascii_lowercase();
    let q = lower.strip_prefix('i').unwrap_or(&lower);
    let q_form = |s: &str| -> bool {
        let Some(rest) = s.strip_prefix('q') else {
            return false;
        };
        let mut chars = rest.chars();
        if !chars.next().is_some_and(is_decimal) {
            return false;
        }
        // (_\w)*: pairs of an underscore and one word character.
        let tail: Vec<char> = chars.collect();
        tail.len().is_multiple_of(2)
            && tail
                .chunks(2)
                .all(|p| p[0] == '_' && (p[1].is_alphanumeric() || p[1] == '_'))
    };
    let f_form = |s: &str| -> bool {
        let s = s.strip_prefix('b').unwrap_or(s);
        let Some(s) = s.strip_prefix('f') else {
            return false;
        };
        let s = s.strip_prefix('p').unwrap_or(s);
        s == "16" || s == "32"
    };
    q_form(q) || q_form(&lower) || f_form(&lower)
}

/// `(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)`, whole part,
/// any case.
fn is_size(part: &str) -> bool {
    let lower = part.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "small" | "mini" | "medium" | "large" | "xl" | "xxl"
    ) {
        return true;
    }
    let c: Vec<char> = lower.chars().collect();
    // Try each way the optional prefix can be taken, as a backtracking regex would.
    let mut starts = vec![0];
    if c.first() == Some(&'a') {
        starts.push(1);
    }
    let digits_end = |from: usize| {
        let mut i = from;
        while i < c.len() && is_decimal(c[i]) {
            i += 1;
        }
        i
    };
    // \d+x prefixes: every run of digits followed by 'x'.
    let d = digits_end(0);
    if d > 0 && c.get(d) == Some(&'x') {
        starts.push(d + 1);
    }
    starts.into_iter().any(|s| {
        // \d+([._]\d+)?[kmbt]\d?
        let a = digits_end(s);
        if a == s {
            return false;
        }
        let mut ends = vec![a];
        if matches!(c.get(a), Some('.') | Some('_')) {
            let b = digits_end(a + 1);
            if b > a + 1 {
                ends.push(b);
            }
        }
        ends.into_iter().any(|e| {
            if !matches!(c.get(e), Some('k' | 'm' | 'b' | 't')) {
                return false;
            }
            let rest = &c[e + 1..];
            rest.is_empty() || (rest.len() == 1 && is_decimal(rest[0]))
        })
    })
}

/// Python's `str.title()`: a cased character after an uncased one is upper-cased, one
/// after a cased one lower-cased.
fn title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for ch in w.chars() {
        let cased = ch.is_lowercase() || ch.is_uppercase();
        if cased {
            if prev_cased {
                out.extend(ch.to_lowercase());
            } else {
                out.extend(ch.to_uppercase());
            }
        }
        if !cased {
            out.push(ch);
        }
        prev_cased = cased;
    }
    out
}

/// Python's `str.islower()`: some cased character, and none upper-case.
fn is_lower(w: &str) -> bool {
    w.chars().any(|c| c.is_lowercase()) && !w.chars().any(|c| c.is_uppercase())
}

/// An id made readable: `-` becomes a space and all-lower-case words are title-cased,
/// except versions (`v1.2`) and words starting with a digit.
pub fn id_to_title(id: &str) -> String {
    let keep = |w: &str| {
        let versionish = w
            .strip_prefix('v')
            .is_some_and(|r| r.split('.').all(is_digits));
        versionish || w.chars().next().is_some_and(is_decimal)
    };
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            if is_lower(w) && !keep(w) {
                title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits a model id into its components. `total_params` (0 when unknown) decides
/// whether a size-like part is the model's size or something else (a context length).
pub fn model_id_components(model_id: &str, total_params: i64) -> IdComponents {
    if model_id.contains(' ') {
        return IdComponents {
            full_name: Some(model_id.to_string()),
            ..IdComponents::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, f)) => (Some(o.to_string()), f.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut classes: Vec<Vec<Class>> = vec![Vec::new(); parts.len()];
    let add = |set: &mut Vec<Class>, c: Class| {
        if !set.contains(&c) {
            set.push(c);
        }
    };

    for i in 0..parts.len() {
        let part = parts[i].clone();
        if is_version(&part) {
            add(&mut classes[i], Class::Version);
        } else if is_quant_type(&part) {
            add(&mut classes[i], Class::Type);
            parts[i] = part.to_uppercase();
        } else if i > 0 && is_size(&part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            // "7b1" means 7.1B.
            if is_decimal(p[n - 1]) {
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.extend(['.', b, a]);
            }
            let n = p.len();
            if n > 1 && is_decimal(p[n - 2]) && matches!(p[n - 1], 'k' | 'm' | 'b' | 't') {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let number: String = p[..p.len() - 1].iter().collect();
                let last = p[p.len() - 1];
                if let Ok(x) = number.trim().parse::<f64>() {
                    let scale = match " KMBT".find(last) {
                        Some(k) => 1000f64.powi(k as i32),
                        None => 0.001,
                    };
                    let label = x * scale;
                    let t = total_params as f64;
                    let context_like = if total_params < 0 {
                        label < (total_params.abs() / 8) as f64
                    } else {
                        (label - t).abs() > (7 * total_params / 8) as f64
                    };
                    if context_like {
                        add(&mut classes[i], Class::Finetune);
                        let n = p.len();
                        p[n - 1] = p[n - 1].to_ascii_lowercase();
                    }
                }
            }
            if classes[i].is_empty() {
                add(&mut classes[i], Class::SizeLabel);
            }
            parts[i] = p.into_iter().collect();
        } else if i > 0
            && matches!(
                part.to_ascii_lowercase().as_str(),
                "chat" | "instruct" | "vision" | "lora"
            )
        {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                add(&mut classes[i], Class::Type);
            } else {
                add(&mut classes[i], Class::Finetune);
            }
        }
    }

    // A numeric size label makes word sizes ("small") ordinary words.
    let numeric_size = parts
        .iter()
        .zip(&classes)
        .any(|(p, c)| c.contains(&Class::SizeLabel) && p.chars().any(is_decimal));
    if numeric_size {
        for (p, c) in parts.iter().zip(classes.iter_mut()) {
            if c.contains(&Class::SizeLabel) && p.chars().all(char::is_alphabetic) {
                c.retain(|&x| x != Class::SizeLabel);
            }
        }
    }

    let mut at_start = true;
    for (p, c) in parts.iter().zip(classes.iter_mut()) {
        let alpha_start = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((c.is_empty() && alpha_start) || c.contains(&Class::Version)) {
            add(c, Class::Basename);
        } else {
            at_start = false;
            if c.is_empty() {
                add(c, Class::Finetune);
            }
        }
    }
    // A trailing version is not part of the basename.
    for c in classes.iter_mut().rev() {
        if c.contains(&Class::Basename) && c.len() > 1 {
            c.retain(|&x| x != Class::Basename);
        } else {
            break;
        }
    }

    let join = |pick: &dyn Fn(&Vec<Class>) -> bool| -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for (p, c) in parts.iter().zip(&classes) {
            if pick(c) {
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut basename = join(&|c| c.contains(&Class::Basename));
    let size_label = {
        let mut seen: Vec<&str> = Vec::new();
        for (p, c) in parts.iter().zip(&classes) {
            if c.contains(&Class::SizeLabel) && !seen.contains(&p.as_str()) {
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let finetune = join(&|c| c.contains(&Class::Finetune));
    let version = join(&|c| c.contains(&Class::Version) && !c.contains(&Class::Basename));
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdComponents {
        full_name: Some(full),
        organization: org,
        basename,
        finetune,
        version,
        size_label,
    }
}

/// A parameter count rounded for a label: `135M`, `8.0B`, `46K` (at least two digits).
pub fn rounded_count(n: u64) -> String {
    let x = n as f64;
    let (scaled, suffix) = if x > 1e12 {
        (x * 1e-12, "T")
    } else if x > 1e9 {
        (x * 1e-9, "B")
    } else if x > 1e6 {
        (x * 1e-6, "M")
    } else {
        (x * 1e-3, "K")
    };
    let whole = scaled.round_ties_even() as u64;
    let digits = if whole == 0 {
        0
    } else {
        whole.to_string().len()
    };
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(id: &str, total: i64) -> [Option<String>; 4] {
        let c = model_id_components(id, total);
        [c.basename, c.finetune, c.version, c.size_label]
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn ids_split_as_the_reference_splits_them() {
        // Expected values from gguf-py's Metadata.get_model_id_components.
        assert_eq!(
            parts("Mixtral-8x7B-Instruct-v0.1", 0),
            [s("Mixtral"), s("Instruct"), s("v0.1"), s("8x7B")]
        );
        assert_eq!(
            parts("Meta-Llama-3-8B", 0),
            [s("Meta-Llama-3"), None, None, s("8B")]
        );
        assert_eq!(
            parts("Llama-3.1-Minitron-4B-Width-Base", 4_000_000_000),
            [s("Llama-3.1-Minitron"), s("Width-Base"), None, s("4B")]
        );
        // A size far from the real count is a finetune (a context length, say).
        assert_eq!(
            parts("Llama-3.1-Minitron-4B-Width-Base", 20_000_000),
            [s("Llama-3.1-Minitron"), s("4b-Width-Base"), None, None]
        );
        assert_eq!(parts("bloom-7b1", 0), [s("bloom"), None, None, s("7.1B")]);
        assert_eq!(parts("tiny", 0), [None, None, None, None]);
        assert_eq!(
            parts("hf-tiny-v0.2-chat", 0),
            [s("hf-tiny-v0.2"), s("chat"), None, None]
        );
        assert_eq!(
            parts("model-Q4_K-F16-small", 0),
            [s("model"), None, None, s("small")]
        );
        let c = model_id_components("org/My-Model-7B", 0);
        assert_eq!(c.organization, s("org"));
        assert_eq!(c.full_name, s("My-Model-7B"));
    }

    #[test]
    fn titles_and_counts() {
        assert_eq!(id_to_title("tiny-llama-v0.1-chat"), "Tiny Llama v0.1 Chat");
        assert_eq!(id_to_title("llama3b-x"), "Llama3B X");
        assert_eq!(id_to_title("Minitron-4B-width"), "Minitron 4B Width");
        assert_eq!(id_to_title("8b-base"), "8b Base");
        assert_eq!(rounded_count(135_000_000), "135M");
        assert_eq!(rounded_count(8_030_261_248), "8.0B");
        assert_eq!(rounded_count(16_781_312), "17M");
        assert_eq!(rounded_count(999), "1.0K");
        assert_eq!(rounded_count(0), "0.00K");
    }
}
