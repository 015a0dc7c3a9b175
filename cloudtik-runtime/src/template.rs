//! Config-file templates: `{{name}}` placeholders replaced by values.

use std::collections::BTreeMap;

use cloudtik_core::{Error, ErrorKind, Result};

/// Renders `template`, replacing each `{{key}}` with its value in `values`. A
/// placeholder without a value is an error naming it (a template and its caller out of
/// step), so no file is written half-filled.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "a template has an unclosed `{{`",
            ));
        };
        let key = after[..end].trim();
        let value = values.get(key).ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!("the template placeholder `{{{{{key}}}}}` has no value"),
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_missing_ones_refused() {
        let values = BTreeMap::from([("a", "1".to_string()), ("b", "two".to_string())]);
        assert_eq!(render("x={{a}} y={{ b }}\n", &values).unwrap(), "x=1 y=two\n");
        let err = render("{{c}}", &values).unwrap_err();
        assert!(err.to_string().contains("{{c}}"), "{err:#}");
        assert!(render("{{a", &values).is_err());
    }
}
