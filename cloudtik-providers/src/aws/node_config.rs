//! A node type's `node_config` (the keys of EC2's `RunInstances`, as in CloudTik) read
//! into the parameters the provider sets on the launch call.

use cloudtik_core::{Error, Result};
use serde_json::{Map, Value};

/// The `node_config` keys the AWS provider understands.
pub const SUPPORTED_KEYS: [&str; 9] = [
    "InstanceType",
    "ImageId",
    "SubnetId",
    "SubnetIds",
    "KeyName",
    "SecurityGroupIds",
    "IamInstanceProfile",
    "UserData",
    "EbsOptimized",
];

/// The launch parameters of one node type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ec2NodeConfig {
    /// `InstanceType`, e.g. `m5.large` (required).
    pub instance_type: String,
    /// `ImageId`, an AMI id. `None`: the provider launches the newest default image
    /// (see [`AwsSettings::image_owners`](super::AwsSettings::image_owners)).
    pub image_id: Option<String>,
    /// `SubnetIds` (or the one `SubnetId`), tried in order while launches fail for
    /// lack of capacity. Empty: EC2 picks the default subnet.
    pub subnet_ids: Vec<String>,
    /// `KeyName`.
    pub key_name: Option<String>,
    /// `SecurityGroupIds`.
    pub security_group_ids: Vec<String>,
    /// `IamInstanceProfile.Arn`.
    pub iam_instance_profile_arn: Option<String>,
    /// `IamInstanceProfile.Name`.
    pub iam_instance_profile_name: Option<String>,
    /// `UserData` (base64, as EC2 takes it).
    pub user_data: Option<String>,
    /// `EbsOptimized`.
    pub ebs_optimized: Option<bool>,
}

impl Ec2NodeConfig {
    /// Reads a `node_config` object. Errors name the offending key
    /// (`node_config.<key>`); keys the provider does not support are errors rather than
    /// being dropped silently.
    pub fn from_value(node_config: &Value) -> Result<Self> {
        let map = match node_config {
            Value::Object(m) => m,
            Value::Null => {
                return Err(Error::config(
                    "node_config",
                    "the AWS provider needs at least InstanceType",
                ));
            }
            other => {
                return Err(Error::config(
                    "node_config",
                    format!("expected an object of RunInstances keys, found {other}"),
                ));
            }
        };
        if let Some(key) = map.keys().find(|k| !SUPPORTED_KEYS.contains(&k.as_str())) {
            return Err(Error::config(
                format!("node_config.{key}"),
                format!(
                    "the AWS provider does not support this key; supported: {}",
                    SUPPORTED_KEYS.join(", ")
                ),
            ));
        }
        let mut subnet_ids = string_list(map, "SubnetIds")?;
        if let Some(id) = string(map, "SubnetId")?
            && !subnet_ids.contains(&id)
        {
            subnet_ids.insert(0, id);
        }
        let (arn, name) = match map.get("IamInstanceProfile") {
            None => (None, None),
            Some(Value::Object(p)) => {
                let arn = string(p, "Arn").map_err(|_| not_a_string("IamInstanceProfile.Arn"))?;
                let name = string(p, "Name").map_err(|_| not_a_string("IamInstanceProfile.Name"))?;
                (arn, name)
            }
            Some(other) => {
                return Err(Error::config(
                    "node_config.IamInstanceProfile",
                    format!("expected an object with Arn or Name, found {other}"),
                ));
            }
        };
        let ebs_optimized = match map.get("EbsOptimized") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(Error::config(
                    "node_config.EbsOptimized",
                    format!("expected true or false, found {other}"),
                ));
            }
        };
        Ok(Ec2NodeConfig {
            instance_type: required(map, "InstanceType")?,
            image_id: string(map, "ImageId")?,
            subnet_ids,
            key_name: string(map, "KeyName")?,
            security_group_ids: string_list(map, "SecurityGroupIds")?,
            iam_instance_profile_arn: arn,
            iam_instance_profile_name: name,
            user_data: string(map, "UserData")?,
            ebs_optimized,
        })
    }
}

fn not_a_string(key: &str) -> Error {
    Error::config(format!("node_config.{key}"), "expected a non-empty string")
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(Error::config(
            format!("node_config.{key}"),
            format!("expected a non-empty string, found {other}"),
        )),
    }
}

fn required(map: &Map<String, Value>, key: &str) -> Result<String> {
    string(map, key)?
        .ok_or_else(|| Error::config(format!("node_config.{key}"), "is required by the AWS provider"))
}

fn string_list(map: &Map<String, Value>, key: &str) -> Result<Vec<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(Error::config(
                    format!("node_config.{key}"),
                    format!("expected a list of non-empty strings, found item {other}"),
                )),
            })
            .collect(),
        Some(other) => Err(Error::config(
            format!("node_config.{key}"),
            format!("expected a list of strings, found {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use cloudtik_core::ErrorKind;
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_supported_keys() {
        let c = Ec2NodeConfig::from_value(&json!({
            "InstanceType": "m5.large",
            "ImageId": "ami-1",
            "SubnetId": "subnet-a",
            "SubnetIds": ["subnet-b", "subnet-a"],
            "KeyName": "key",
            "SecurityGroupIds": ["sg-1"],
            "IamInstanceProfile": {"Name": "cloudtik-worker"},
            "UserData": "ZWNobw==",
            "EbsOptimized": true,
        }))
        .unwrap();
        assert_eq!(c.instance_type, "m5.large");
        assert_eq!(c.image_id.as_deref(), Some("ami-1"));
        assert_eq!(c.subnet_ids, ["subnet-b", "subnet-a"]);
        assert_eq!(c.key_name.as_deref(), Some("key"));
        assert_eq!(c.security_group_ids, ["sg-1"]);
        assert_eq!(c.iam_instance_profile_name.as_deref(), Some("cloudtik-worker"));
        assert_eq!(c.iam_instance_profile_arn, None);
        assert_eq!(c.user_data.as_deref(), Some("ZWNobw=="));
        assert_eq!(c.ebs_optimized, Some(true));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Ec2NodeConfig::from_value(&json!({"ImageId": "ami-1"})).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert_eq!(e.location().unwrap().path, "node_config.InstanceType");
        let c = Ec2NodeConfig::from_value(&json!({"InstanceType": "m5.large"})).unwrap();
        assert_eq!(
            c.image_id, None,
            "no ImageId: the provider looks up the default image"
        );
        let e = Ec2NodeConfig::from_value(&json!({
            "InstanceType": "m5.large", "ImageId": "ami-1", "BlockDeviceMappings": []
        }))
        .unwrap_err();
        assert_eq!(e.location().unwrap().path, "node_config.BlockDeviceMappings");
        let e = Ec2NodeConfig::from_value(&json!({
            "InstanceType": "m5.large", "ImageId": "ami-1", "SecurityGroupIds": "sg-1"
        }))
        .unwrap_err();
        assert_eq!(e.location().unwrap().path, "node_config.SecurityGroupIds");
    }
}
