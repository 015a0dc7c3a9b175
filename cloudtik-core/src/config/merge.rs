//! CloudTik's config merge (`update_nested_dict`): how a config is laid over its
//! defaults and templates.
//!
//! * mappings merge key by key, recursively;
//! * a list holding one mapping with a `name` key, laid over a list holding one mapping
//!   with the same `name`, merges the two mappings;
//! * `key++: [..]` appends to the list at `key`, `++key: [..]` prepends to it (a missing
//!   or null `key` is set to the given list);
//! * everything else replaces.

use serde_json::{Map, Value};

use super::path::YamlPath;
use crate::error::{Error, Result};

/// Lays `update` over `target`, CloudTik's way. `path` is where `target` sits, for errors.
pub fn merge_into(
    target: &mut Map<String, Value>,
    update: &Map<String, Value>,
    path: &YamlPath,
) -> Result<()> {
    let mut appends: Vec<(&String, &Value)> = Vec::new();
    for (k, v) in update {
        if is_list_append_key(k) {
            appends.push((k, v));
            continue;
        }
        match v {
            Value::Object(new_map) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_into(t, new_map, &path.key(k))?;
                }
            }
            _ => {
                if let (Some(new_item), Some(Value::Array(old))) = (only_named_item(v), target.get_mut(k))
                    && let [Value::Object(old_item)] = old.as_mut_slice()
                    && old_item.get("name") == new_item.get("name")
                {
                    merge_into(old_item, new_item, &path.key(k).index(0))?;
                    continue;
                }
                target.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in appends {
        let Value::Array(items) = v else {
            return Err(Error::config(
                path.key(k).to_string(),
                format!("`{k}` adds to a list, so its value must be a list"),
            ));
        };
        let (to_key, prepend) = match k.strip_prefix("++") {
            Some(rest) => (rest, true),
            None => (k.strip_suffix("++").unwrap_or(k), false),
        };
        if to_key.is_empty() || to_key.starts_with("++") || to_key.ends_with("++") {
            return Err(Error::config(
                path.key(k).to_string(),
                "`++` goes either before or after a key name, e.g. `setup_commands++`".to_string(),
            ));
        }
        match target.get_mut(to_key) {
            None | Some(Value::Null) => {
                target.insert(to_key.to_string(), Value::Array(items.clone()));
            }
            Some(Value::Array(existing)) => {
                if prepend {
                    let mut merged = items.clone();
                    merged.append(existing);
                    *existing = merged;
                } else {
                    existing.extend(items.iter().cloned());
                }
            }
            Some(_) => {
                return Err(Error::config(
                    path.key(k).to_string(),
                    format!("`{k}` adds to a list, but `{to_key}` is not a list"),
                ));
            }
        }
    }
    Ok(())
}

fn is_list_append_key(k: &str) -> bool {
    k.len() > 2 && (k.ends_with("++") || k.starts_with("++"))
}

fn only_named_item(v: &Value) -> Option<&Map<String, Value>> {
    match v {
        Value::Array(items) if items.len() == 1 => match &items[0] {
            Value::Object(m) if m.contains_key("name") => Some(m),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(target: Value, update: Value) -> Result<Value> {
        let mut t = target.as_object().unwrap().clone();
        merge_into(&mut t, update.as_object().unwrap(), &YamlPath::root())?;
        Ok(Value::Object(t))
    }

    #[test]
    fn maps_merge_deeply_and_scalars_replace() {
        let v = merged(
            json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 1}),
            json!({"a": {"y": 3}, "b": [3], "d": 4}),
        )
        .unwrap();
        assert_eq!(v, json!({"a": {"x": 1, "y": 3}, "b": [3], "c": 1, "d": 4}));
    }

    #[test]
    fn single_named_items_merge_by_name() {
        let target = json!({"l": [{"name": "child-1", "value": 0, "test_value": 0}]});
        let v = merged(target.clone(), json!({"l": [{"name": "child-1", "value": 1}]})).unwrap();
        assert_eq!(
            v,
            json!({"l": [{"name": "child-1", "value": 1, "test_value": 0}]})
        );
        let v = merged(target.clone(), json!({"l": [{"name": "child-2", "value": 2}]})).unwrap();
        assert_eq!(v, json!({"l": [{"name": "child-2", "value": 2}]}));
        let two = json!({"l": [{"name": "child-1", "value": 1}, {"name": "child-2", "value": 2}]});
        assert_eq!(merged(target.clone(), two.clone()).unwrap(), two);
        assert_eq!(
            merged(target, json!({"l": ["child-1"]})).unwrap(),
            json!({"l": ["child-1"]})
        );
    }

    #[test]
    fn plus_plus_appends_and_prepends() {
        let v = merged(
            json!({"l": ["b"], "m": ["b1"]}),
            json!({"++l": ["a"], "l++": ["c"], "++m": ["a1"], "m++": ["c1"], "n++": ["x"]}),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"l": ["a", "b", "c"], "m": ["a1", "b1", "c1"], "n": ["x"]})
        );
        // a replacement in the same mapping happens first, then the appends
        let v = merged(
            json!({"l": ["b"]}),
            json!({"++l": ["a"], "l": ["B"], "l++": ["c"]}),
        )
        .unwrap();
        assert_eq!(v, json!({"l": ["a", "B", "c"]}));
    }

    #[test]
    fn bad_plus_plus_use_names_the_key() {
        let e = merged(json!({"l": "text"}), json!({"l++": ["a"]})).unwrap_err();
        assert_eq!(e.location().unwrap().path, "l++");
        let e = merged(json!({}), json!({"l++": "a"})).unwrap_err();
        assert!(e.to_string().contains("must be a list"), "{e:#}");
        let e = merged(json!({}), json!({"++l++": ["a"]})).unwrap_err();
        assert_eq!(e.location().unwrap().path, "++l++");
    }
}
