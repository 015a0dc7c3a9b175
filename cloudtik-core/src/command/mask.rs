//! Masking of secret-looking environment variables in log lines and error messages.

use std::collections::BTreeMap;

/// Words that make an environment variable's value secret when its name contains one
/// of them (case-insensitive): `PASSWORD`, `SECRET`, `KEY`, `TOKEN`, `CREDENTIAL`.
pub const SECRET_NAME_PARTS: &[&str] = &["PASSWORD", "SECRET", "KEY", "TOKEN", "CREDENTIAL"];

/// What a secret value is replaced with.
pub const MASK: &str = "******";

/// True when a variable of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
}

/// The values to hide: those of secret-looking variables, longest first (so a value
/// that contains another is replaced whole). Empty values are skipped.
fn secret_values(env: &BTreeMap<String, String>) -> Vec<&str> {
    let mut values: Vec<&str> = env
        .iter()
        .filter(|(k, v)| is_secret_name(k) && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// `text` with every value of a secret-looking variable of `env` replaced by [`MASK`].
pub fn mask_secrets(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for value in secret_values(env) {
        if out.contains(value) {
            out = out.replace(value, MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_recognised() {
        for name in [
            "REDIS_PASSWORD",
            "aws_secret_access_key",
            "API_TOKEN",
            "GCP_CREDENTIALS",
            "ssh_key",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["PATH", "HOME", "CLOUDTIK_NODE_IP"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn values_of_secret_variables_are_masked_longest_first() {
        let env: BTreeMap<String, String> = [
            ("DB_PASSWORD", "hunter2"),
            ("API_TOKEN", "hunter2-extended"),
            ("USER_NAME", "alice"),
            ("EMPTY_SECRET", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let masked = mask_secrets("login alice hunter2 then hunter2-extended", &env);
        assert_eq!(masked, format!("login alice {MASK} then {MASK}"));
    }
}
