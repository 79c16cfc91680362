//! File types: what `mcc quantize TYPE` asks for, as llama.cpp numbers and names them
//! (`general.file_type` holds the number), and the tensor type each defaults to.

use crate::gguf::GgmlType;

/// A file type: a mix of tensor types chosen per tensor by [`super::rules`].
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ1_S,
    IQ1_M,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    IQ3_M,
    IQ4_NL,
    IQ4_XS,
}

/// (file type, `general.file_type` number, name, default tensor type). The numbers are
/// llama.cpp's `llama_ftype`; the default is the type a tensor gets before the per-role
/// rules and the fallback for row widths the type's block does not divide.
const TABLE: [(FileType, u32, &str, GgmlType); 30] = [
    (FileType::F32, 0, "F32", GgmlType::F32),
    (FileType::F16, 1, "F16", GgmlType::F16),
    (FileType::Q4_0, 2, "Q4_0", GgmlType::Q4_0),
    (FileType::Q4_1, 3, "Q4_1", GgmlType::Q4_1),
    (FileType::Q8_0, 7, "Q8_0", GgmlType::Q8_0),
    (FileType::Q5_0, 8, "Q5_0", GgmlType::Q5_0),
    (FileType::Q5_1, 9, "Q5_1", GgmlType::Q5_1),
    (FileType::Q2_K, 10, "Q2_K", GgmlType::Q2_K),
    (FileType::Q3_K_S, 11, "Q3_K_S", GgmlType::Q3_K),
    (FileType::Q3_K_M, 12, "Q3_K_M", GgmlType::Q3_K),
    (FileType::Q3_K_L, 13, "Q3_K_L", GgmlType::Q3_K),
    (FileType::Q4_K_S, 14, "Q4_K_S", GgmlType::Q4_K),
    (FileType::Q4_K_M, 15, "Q4_K_M", GgmlType::Q4_K),
    (FileType::Q5_K_S, 16, "Q5_K_S", GgmlType::Q5_K),
    (FileType::Q5_K_M, 17, "Q5_K_M", GgmlType::Q5_K),
    (FileType::Q6_K, 18, "Q6_K", GgmlType::Q6_K),
    (FileType::IQ2_XXS, 19, "IQ2_XXS", GgmlType::IQ2_XXS),
    (FileType::IQ2_XS, 20, "IQ2_XS", GgmlType::IQ2_XS),
    (FileType::Q2_K_S, 21, "Q2_K_S", GgmlType::Q2_K),
    (FileType::IQ3_XS, 22, "IQ3_XS", GgmlType::IQ3_S),
    (FileType::IQ3_XXS, 23, "IQ3_XXS", GgmlType::IQ3_XXS),
    (FileType::IQ1_S, 24, "IQ1_S", GgmlType::IQ1_S),
    (FileType::IQ4_NL, 25, "IQ4_NL", GgmlType::IQ4_NL),
    (FileType::IQ3_S, 26, "IQ3_S", GgmlType::IQ3_S),
    (FileType::IQ3_M, 27, "IQ3_M", GgmlType::IQ3_S),
    // IQ2_S's default is IQ2_XS and IQ2_M's is IQ2_S: the names are of the mixes.
    (FileType::IQ2_S, 28, "IQ2_S", GgmlType::IQ2_XS),
    (FileType::IQ2_M, 29, "IQ2_M", GgmlType::IQ2_S),
    (FileType::IQ4_XS, 30, "IQ4_XS", GgmlType::IQ4_XS),
    (FileType::IQ1_M, 31, "IQ1_M", GgmlType::IQ1_M),
    (FileType::BF16, 32, "BF16", GgmlType::BF16),
];

/// Names llama-quantize takes for a file type of the table above.
const ALIASES: [(&str, FileType); 3] = [
    ("Q3_K", FileType::Q3_K_M),
    ("Q4_K", FileType::Q4_K_M),
    ("Q5_K", FileType::Q5_K_M),
];

/// llama-quantize's file types that mcc does not write: their tensor types are not in
/// mcc's table (or COPY, which keeps every tensor as it is).
const NOT_SUPPORTED: [&str; 7] = [
    "Q1_0",
    "Q2_0",
    "MXFP4_MOE",
    "TQ1_0",
    "TQ2_0",
    "NVFP4",
    "COPY",
];

impl FileType {
    fn row(self) -> &'static (FileType, u32, &'static str, GgmlType) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every file type is in the table")
    }

    /// `general.file_type`'s value.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// llama-quantize's name.
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// The tensor type before the per-tensor rules.
    pub fn default_type(self) -> GgmlType {
        self.row().3
    }

    /// Every name [`FileType::parse`] takes.
    pub fn names() -> impl Iterator<Item = &'static str> {
        TABLE.iter().map(|r| r.2).chain(ALIASES.iter().map(|a| a.0))
    }

    /// A file type from its name (any case, aliases too) or its number, as llama-quantize
    /// reads its TYPE argument.
    pub fn parse(arg: &str) -> Result<FileType, String> {
        let upper = arg.to_ascii_uppercase();
        if let Some(r) = TABLE.iter().find(|r| r.2 == upper) {
            return Ok(r.0);
        }
        if let Some(a) = ALIASES.iter().find(|a| a.0 == upper) {
            return Ok(a.1);
        }
        if let Ok(n) = arg.parse::<u32>() {
            if let Some(r) = TABLE.iter().find(|r| r.1 == n) {
                return Ok(r.0);
            }
        }
        if NOT_SUPPORTED.contains(&upper.as_str()) {
            return Err(format!(
                "file type {arg:?} is not supported by mcc quantize (its tensor types are not \
                 in mcc's type table)"
            ));
        }
        let names: Vec<&str> = FileType::names().collect();
        Err(format!(
            "unknown file type {arg:?}: expected one of {} (or its llama.cpp number)",
            names.join(", ")
        ))
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether ggml counts `t` as quantized (everything but the float types).
pub fn is_quantized(t: GgmlType) -> bool {
    !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}
