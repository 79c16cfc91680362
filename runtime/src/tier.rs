//! Kernel tiers: the instruction sets an x86-64 binary carries kernels for, and the
//! choice of one at start-up.
//!
//! Every SIMD kernel mirrors the arithmetic llama.cpp has when it is built for the same
//! instruction set, and ggml chooses that arithmetic at compile time. So do our kernels
//! (`cfg(target_feature)`), and a binary that runs on any x86-64 CPU carries the runtime
//! and the model's forward pass compiled once per tier: `mcc build` gives each tier's
//! copy its own crate and rustc flags ([`Tier::rustc_flags`]), and `main` calls one copy
//! ([`dispatch`]). The choice is made once per process, before anything runs, so no
//! kernel call pays for it, and each tier runs exactly the code a single-tier build for
//! that CPU would run.
//!
//! `MCC_CPU=avx512|avx2|scalar` forces a tier, so that one machine can test every tier
//! it can run. A tier the CPU lacks is refused: its code would die on an illegal
//! instruction.
//!
//! The runtime's build script includes this file too (for the features a tier's copy is
//! compiled with): keep it free of crate paths.

/// One kernel tier, best first in [`Tier::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// AVX-512 F/BW/CD/DQ/VL with VNNI (rustc's `x86-64-v4` plus `avx512vnni`): what
    /// llama.cpp's AVX-512 build uses.
    Avx512,
    /// AVX2, FMA, F16C, BMI1/2 (rustc's `x86-64-v3`): Haswell, Zen 1 and later.
    Avx2,
    /// Any x86-64 (SSE2): the portable scalar kernels.
    Scalar,
}

/// The environment variable that forces a tier.
pub const ENV: &str = "MCC_CPU";

/// Declares the feature lists of the tiers and [`cpu_has`], which detects exactly those
/// features: `is_x86_feature_detected!` takes literal names only.
macro_rules! tier_features {
    ($($(#[$doc:meta])* $list:ident: [$($feature:tt),* $(,)?];)*) => {
        $($(#[$doc])* const $list: &[&str] = &[$($feature),*];)*

        /// Whether this CPU has `feature` (one of the tiers' features).
        fn cpu_has(feature: &str) -> bool {
            #[cfg(target_arch = "x86_64")]
            match feature {
                $($($feature => std::arch::is_x86_feature_detected!($feature),)*)*
                _ => false,
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = feature;
                false
            }
        }
    };
}

tier_features! {
    /// Features of `x86-64-v3` over the baseline, as `is_x86_feature_detected!` names them.
    V3: [
        "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b", "avx", "avx2", "bmi1",
        "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave",
    ];
    /// What `x86-64-v4` adds to `x86-64-v3`, plus VNNI.
    V4_VNNI: ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512vnni"];
}

impl Tier {
    /// Every tier, best first: the order [`dispatch`] tries them in.
    pub const ALL: [Tier; 3] = [Tier::Avx512, Tier::Avx2, Tier::Scalar];

    /// The tier's name, as `MCC_CPU` and `info` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Avx512 => "avx512",
            Tier::Avx2 => "avx2",
            Tier::Scalar => "scalar",
        }
    }

    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The rustc flags that compile a tier's copy of the runtime and the model.
    pub const fn rustc_flags(self) -> &'static [&'static str] {
        match self {
            Tier::Avx512 => &[
                "-C",
                "target-cpu=x86-64-v4",
                "-C",
                "target-feature=+avx512vnni",
            ],
            Tier::Avx2 => &["-C", "target-cpu=x86-64-v3"],
            Tier::Scalar => &["-C", "target-cpu=x86-64"],
        }
    }

    /// The CPU features the tier's code may use beyond the x86-64 baseline, as
    /// `is_x86_feature_detected!` and `cfg(target_feature)` name them.
    pub fn features(self) -> Vec<&'static str> {
        match self {
            Tier::Avx512 => V3.iter().chain(V4_VNNI).copied().collect(),
            Tier::Avx2 => V3.to_vec(),
            Tier::Scalar => Vec::new(),
        }
    }
}

/// The tier of a copy that the crate named `package` is: mcc names each tier's copy of
/// the runtime `mcc-runtime-tier-NAME`.
pub fn of_package(package: &str) -> Option<Tier> {
    package
        .strip_prefix("mcc-runtime-tier-")
        .and_then(Tier::from_name)
}

impl Tier {
    /// The features of the tier this CPU lacks (none: the tier runs here).
    pub fn missing(self) -> Vec<&'static str> {
        self.features()
            .into_iter()
            .filter(|f| !cpu_has(f))
            .collect()
    }

    /// The best tier this CPU runs.
    pub fn best() -> Tier {
        Tier::ALL
            .into_iter()
            .find(|t| t.missing().is_empty())
            .unwrap_or(Tier::Scalar)
    }
}

/// The tier to run among those a binary `carries` (best first), and the line `info`
/// prints about it: `MCC_CPU`'s when it is set, else the best the CPU runs.
pub fn choose(carries: &[Tier], forced: Option<&str>) -> Result<(Tier, String), String> {
    let names = || {
        carries
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(forced) = forced else {
        let tier = carries
            .iter()
            .copied()
            .find(|t| t.missing().is_empty())
            .ok_or_else(|| {
                format!(
                    "this CPU runs none of the kernel tiers this binary carries ({})",
                    names()
                )
            })?;
        let why = if carries.len() == 1 {
            "a single-tier build".to_string()
        } else {
            format!("the best of {} on this CPU", names())
        };
        return Ok((tier, format!("{} ({why})", tier.name())));
    };
    let Some(tier) = Tier::from_name(forced) else {
        return Err(format!(
            "{ENV}={forced:?}: expected one of avx512, avx2, scalar"
        ));
    };
    if !carries.contains(&tier) {
        return Err(format!(
            "{ENV}={forced}: this binary carries only the {} kernels (a single-tier build, \
             `mcc build --target-cpu`); build without --target-cpu for every tier",
            names()
        ));
    }
    let missing = tier.missing();
    if !missing.is_empty() {
        return Err(format!(
            "{ENV}={forced}: this CPU lacks {} (the best tier it runs is {})",
            missing.join(", "),
            Tier::best().name()
        ));
    }
    Ok((
        tier,
        format!("{} ({ENV}={forced}; carries {})", tier.name(), names()),
    ))
}

/// The tier this copy of the runtime was compiled for, by its target features: what a
/// single-tier build (`mcc build --target-cpu`) carries.
pub const fn compiled() -> Tier {
    if cfg!(all(
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512cd",
        target_feature = "avx512dq",
        target_feature = "avx512vl",
        target_feature = "avx512vnni"
    )) {
        Tier::Avx512
    } else if cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )) {
        Tier::Avx2
    } else {
        Tier::Scalar
    }
}

/// One tier's copy of the program: its entry point, given the line `info` prints.
pub type Entry = fn(&'static str) -> std::process::ExitCode;

/// `main` of a binary with one copy per tier (`copies`, best first): runs the copy
/// [`choose`] picks, or says why none can run.
pub fn dispatch(copies: &[(Tier, Entry)]) -> std::process::ExitCode {
    let carries: Vec<Tier> = copies.iter().map(|c| c.0).collect();
    let forced = std::env::var(ENV).ok().filter(|v| !v.is_empty());
    match choose(&carries, forced.as_deref()) {
        Ok((tier, line)) => {
            let entry = copies
                .iter()
                .find(|c| c.0 == tier)
                .expect("a carried tier")
                .1;
            entry(Box::leak(line.into_boxed_str()))
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tiers_nest() {
        for t in Tier::ALL {
            assert_eq!(Tier::from_name(t.name()), Some(t));
        }
        assert_eq!(Tier::from_name("sse2"), None);
        // each tier's features include the next one's: a CPU that runs a tier runs
        // every tier after it
        for w in Tier::ALL.windows(2) {
            let (better, worse) = (w[0].features(), w[1].features());
            assert!(worse.iter().all(|f| better.contains(f)), "{w:?}");
        }
        assert!(
            Tier::Scalar.missing().is_empty(),
            "every x86-64 runs the scalar tier"
        );
    }

    #[test]
    fn the_best_carried_tier_the_cpu_runs_is_chosen() {
        let (tier, line) = choose(&Tier::ALL, None).unwrap();
        assert_eq!(tier, Tier::best());
        assert!(line.contains("the best of avx512, avx2, scalar"), "{line}");
        // a binary without the SIMD tiers still runs, on what it has
        let (tier, line) = choose(&[Tier::Scalar], None).unwrap();
        assert_eq!(
            (tier, line.as_str()),
            (Tier::Scalar, "scalar (a single-tier build)")
        );
    }

    #[test]
    fn mcc_cpu_forces_a_tier_or_says_why_it_cannot() {
        let (tier, line) = choose(&Tier::ALL, Some("scalar")).unwrap();
        assert_eq!(tier, Tier::Scalar);
        assert!(line.contains("MCC_CPU=scalar"), "{line}");
        let e = choose(&Tier::ALL, Some("avx3")).unwrap_err();
        assert!(e.contains("expected one of avx512, avx2, scalar"), "{e}");
        let e = choose(&[Tier::Avx2], Some("scalar")).unwrap_err();
        assert!(e.contains("carries only the avx2 kernels"), "{e}");
        for t in Tier::ALL {
            let missing = t.missing();
            match choose(&Tier::ALL, Some(t.name())) {
                Ok((chosen, _)) => assert!(missing.is_empty() && chosen == t),
                Err(e) => {
                    assert!(!missing.is_empty());
                    assert!(
                        e.contains(&format!("this CPU lacks {}", missing.join(", "))),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn this_build_runs_on_this_cpu() {
        // the tests are compiled for this machine (target-cpu=native), so the tier the
        // build was compiled for is one the CPU runs
        assert!(compiled().missing().is_empty(), "{:?}", compiled());
    }
}
