//! A node type's `node_config` (the keys of EC2's `RunInstances`, as in CloudTik) read
//! into the parameters the provider sets on the launch call.

use cloudtik_core::{Error, Result};
use serde_json::{Map, Value};

/// The `node_config` keys the AWS provider understands.
pub const SUPPORTED_KEYS: [&str; 11] = [
    "InstanceType",
    "ImageId",
    "SubnetId",
    "SubnetIds",
    "KeyName",
    "SecurityGroupIds",
    "IamInstanceProfile",
    "UserData",
    "EbsOptimized",
    "InstanceMarketOptions",
    "BlockDeviceMappings",
];

/// The keys of a `node_config.BlockDeviceMappings[i].Ebs` the provider passes on.
pub const EBS_KEYS: [&str; 8] = [
    "VolumeSize",
    "VolumeType",
    "DeleteOnTermination",
    "Iops",
    "Throughput",
    "Encrypted",
    "KmsKeyId",
    "SnapshotId",
];

/// One of `node_config.BlockDeviceMappings`: a device of the instance and the EBS volume
/// (or instance store, or none) behind it, as `RunInstances` takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockDeviceMapping {
    /// `DeviceName`, e.g. `/dev/sda1` (the root device of Ubuntu images).
    pub device_name: String,
    /// `VirtualName`: an instance store volume (`ephemeral0`).
    pub virtual_name: Option<String>,
    /// `NoDevice`: leave out a mapping of the image.
    pub no_device: Option<String>,
    /// `Ebs`.
    pub ebs: Option<EbsVolume>,
}

/// `Ebs` of a [`BlockDeviceMapping`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EbsVolume {
    /// `VolumeSize` in GiB.
    pub volume_size: Option<i32>,
    /// `VolumeType`: `gp3`, `gp2`, `io1`, `io2`, `st1`, `sc1` or `standard`.
    pub volume_type: Option<String>,
    /// `DeleteOnTermination`.
    pub delete_on_termination: Option<bool>,
    /// `Iops` (gp3, io1, io2).
    pub iops: Option<i32>,
    /// `Throughput` in MiB/s (gp3).
    pub throughput: Option<i32>,
    /// `Encrypted`.
    pub encrypted: Option<bool>,
    /// `KmsKeyId`.
    pub kms_key_id: Option<String>,
    /// `SnapshotId`.
    pub snapshot_id: Option<String>,
}

/// The keys of `node_config.InstanceMarketOptions.SpotOptions` the provider passes on.
pub const SPOT_OPTION_KEYS: [&str; 3] = ["MaxPrice", "SpotInstanceType", "InstanceInterruptionBehavior"];

/// `node_config.InstanceMarketOptions` with `MarketType: spot`: the node type asks for
/// spot instances itself, whatever `prefer_spot_node` says.
///
/// Unlike a spot launch asked for by `prefer_spot_node`, such a launch does **not** fall
/// back to on-demand after a spot capacity or price error: the node type said spot, so
/// the error is the launch's (a capacity error still moves on to the next subnet, and
/// the autoscaler backs the node type off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpotMarketOptions {
    /// `SpotOptions.MaxPrice`: the highest hourly price in USD, as EC2 takes it (a
    /// string such as `"0.05"`; a YAML number is accepted). `None`: the on-demand price.
    pub max_price: Option<String>,
    /// `SpotOptions.SpotInstanceType`: only `one-time` is accepted. A `persistent`
    /// request would launch a replacement after the provider terminates the instance.
    pub spot_instance_type: Option<String>,
    /// `SpotOptions.InstanceInterruptionBehavior`: only `terminate`, the one behaviour
    /// EC2 allows for one-time requests.
    pub instance_interruption_behavior: Option<String>,
}

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
    /// `InstanceMarketOptions` with `MarketType: spot`; `None` without the key.
    pub spot: Option<SpotMarketOptions>,
    /// `BlockDeviceMappings` (CloudTik's templates size the root volume with it).
    pub block_device_mappings: Vec<BlockDeviceMapping>,
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
        let spot = match map.get("InstanceMarketOptions") {
            None | Some(Value::Null) => None,
            Some(v) => Some(market_options(v)?),
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
            spot,
            block_device_mappings: block_device_mappings(map.get("BlockDeviceMappings"))?,
        })
    }
}

/// Reads `node_config.BlockDeviceMappings`.
fn block_device_mappings(value: Option<&Value>) -> Result<Vec<BlockDeviceMapping>> {
    const AT: &str = "node_config.BlockDeviceMappings";
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(Error::config(
                AT,
                format!("expected a list of {{DeviceName, Ebs}} objects, found {other}"),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{AT}[{i}]");
        let Value::Object(map) = item else {
            return Err(Error::config(
                at,
                format!("expected an object with DeviceName and Ebs, found {item}"),
            ));
        };
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "DeviceName" | "VirtualName" | "NoDevice" | "Ebs"))
        {
            return Err(Error::config(
                format!("{at}.{key}"),
                "the AWS provider does not support this key; supported: DeviceName, VirtualName, NoDevice, Ebs",
            ));
        }
        let text = |map: &Map<String, Value>, path: String, key: &str| -> Result<Option<String>> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(other) => Err(Error::config(
                    path,
                    format!("expected a non-empty string, found {other}"),
                )),
            }
        };
        let device_name = text(map, format!("{at}.DeviceName"), "DeviceName")?.ok_or_else(|| {
            Error::config(
                format!("{at}.DeviceName"),
                "is required, e.g. /dev/sda1 (the root device of Ubuntu images)",
            )
        })?;
        let ebs = match map.get("Ebs") {
            None | Some(Value::Null) => None,
            Some(Value::Object(e)) => Some(ebs_volume(e, &format!("{at}.Ebs"))?),
            Some(other) => {
                return Err(Error::config(
                    format!("{at}.Ebs"),
                    format!("expected an object of {}, found {other}", EBS_KEYS.join(", ")),
                ));
            }
        };
        out.push(BlockDeviceMapping {
            virtual_name: text(map, format!("{at}.VirtualName"), "VirtualName")?,
            no_device: match map.get("NoDevice") {
                // EC2 takes an empty string here.
                Some(Value::String(s)) => Some(s.clone()),
                None | Some(Value::Null) => None,
                Some(other) => {
                    return Err(Error::config(
                        format!("{at}.NoDevice"),
                        format!("expected a string (usually \"\"), found {other}"),
                    ));
                }
            },
            device_name,
            ebs,
        });
    }
    Ok(out)
}

/// Reads one `Ebs` object at `at`.
fn ebs_volume(map: &Map<String, Value>, at: &str) -> Result<EbsVolume> {
    if let Some(key) = map.keys().find(|k| !EBS_KEYS.contains(&k.as_str())) {
        return Err(Error::config(
            format!("{at}.{key}"),
            format!(
                "the AWS provider does not support this key; supported: {}",
                EBS_KEYS.join(", ")
            ),
        ));
    }
    let int = |key: &str| -> Result<Option<i32>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64().and_then(|v| i32::try_from(v).ok()) {
                Some(v) if v > 0 => Ok(Some(v)),
                _ => Err(Error::config(
                    format!("{at}.{key}"),
                    format!("expected a positive whole number, found {n}"),
                )),
            },
            Some(other) => Err(Error::config(
                format!("{at}.{key}"),
                format!("expected a positive whole number, found {other}"),
            )),
        }
    };
    let boolean = |key: &str| -> Result<Option<bool>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Error::config(
                format!("{at}.{key}"),
                format!("expected true or false, found {other}"),
            )),
        }
    };
    let text = |key: &str| -> Result<Option<String>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(Error::config(
                format!("{at}.{key}"),
                format!("expected a non-empty string, found {other}"),
            )),
        }
    };
    let volume_type = text("VolumeType")?;
    if let Some(t) = &volume_type
        && !matches!(
            t.as_str(),
            "gp3" | "gp2" | "io1" | "io2" | "st1" | "sc1" | "standard"
        )
    {
        return Err(Error::config(
            format!("{at}.VolumeType"),
            format!("`{t}` is not an EBS volume type: expected gp3, gp2, io1, io2, st1, sc1 or standard"),
        ));
    }
    Ok(EbsVolume {
        volume_size: int("VolumeSize")?,
        volume_type,
        delete_on_termination: boolean("DeleteOnTermination")?,
        iops: int("Iops")?,
        throughput: int("Throughput")?,
        encrypted: boolean("Encrypted")?,
        kms_key_id: text("KmsKeyId")?,
        snapshot_id: text("SnapshotId")?,
    })
}

/// Reads `node_config.InstanceMarketOptions`.
fn market_options(value: &Value) -> Result<SpotMarketOptions> {
    const AT: &str = "node_config.InstanceMarketOptions";
    let Value::Object(map) = value else {
        return Err(Error::config(
            AT,
            format!("expected an object with MarketType and SpotOptions, found {value}"),
        ));
    };
    if let Some(key) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "MarketType" | "SpotOptions"))
    {
        return Err(Error::config(
            format!("{AT}.{key}"),
            "the AWS provider does not support this key; supported: MarketType, SpotOptions",
        ));
    }
    match map.get("MarketType") {
        Some(Value::String(s)) if s == "spot" => {}
        Some(other) => {
            return Err(Error::config(
                format!("{AT}.MarketType"),
                format!("expected `spot` (the only market type the AWS provider launches), found {other}"),
            ));
        }
        None => {
            return Err(Error::config(format!("{AT}.MarketType"), "is required: `spot`"));
        }
    }
    let options = match map.get("SpotOptions") {
        None | Some(Value::Null) => return Ok(SpotMarketOptions::default()),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(Error::config(
                format!("{AT}.SpotOptions"),
                format!(
                    "expected an object of {}, found {other}",
                    SPOT_OPTION_KEYS.join(", ")
                ),
            ));
        }
    };
    let at = |key: &str| format!("{AT}.SpotOptions.{key}");
    if let Some(key) = options.keys().find(|k| !SPOT_OPTION_KEYS.contains(&k.as_str())) {
        return Err(Error::config(
            at(key),
            format!(
                "the AWS provider does not support this key; supported: {}",
                SPOT_OPTION_KEYS.join(", ")
            ),
        ));
    }
    let max_price = match options.get("MaxPrice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.parse::<f64>().is_ok_and(|p| p > 0.0) => Some(s.clone()),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|p| p > 0.0) => Some(n.to_string()),
        Some(other) => {
            return Err(Error::config(
                at("MaxPrice"),
                format!("expected a positive price in USD per hour, e.g. \"0.05\", found {other}"),
            ));
        }
    };
    let one_of = |key: &str, allowed: &str, why: &str| -> Result<Option<String>> {
        match options.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s == allowed => Ok(Some(s.clone())),
            Some(other) => Err(Error::config(
                at(key),
                format!("expected `{allowed}`, found {other}: {why}"),
            )),
        }
    };
    Ok(SpotMarketOptions {
        max_price,
        spot_instance_type: one_of(
            "SpotInstanceType",
            "one-time",
            "a persistent spot request would launch a new instance after the provider terminates one",
        )?,
        instance_interruption_behavior: one_of(
            "InstanceInterruptionBehavior",
            "terminate",
            "EC2 allows stop and hibernate only for persistent spot requests, which the provider does not launch",
        )?,
    })
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
            "InstanceType": "m5.large", "ImageId": "ami-1", "Placement": {}
        }))
        .unwrap_err();
        assert_eq!(e.location().unwrap().path, "node_config.Placement");
        let e = Ec2NodeConfig::from_value(&json!({
            "InstanceType": "m5.large", "ImageId": "ami-1", "SecurityGroupIds": "sg-1"
        }))
        .unwrap_err();
        assert_eq!(e.location().unwrap().path, "node_config.SecurityGroupIds");
    }

    #[test]
    fn reads_spot_market_options() {
        let base = json!({"InstanceType": "m5.large", "ImageId": "ami-1"});
        assert_eq!(Ec2NodeConfig::from_value(&base).unwrap().spot, None);
        let mut c = base.clone();
        c["InstanceMarketOptions"] = json!({"MarketType": "spot"});
        assert_eq!(
            Ec2NodeConfig::from_value(&c).unwrap().spot,
            Some(SpotMarketOptions::default())
        );
        c["InstanceMarketOptions"] = json!({
            "MarketType": "spot",
            "SpotOptions": {
                "MaxPrice": "0.05",
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate"
            }
        });
        let spot = Ec2NodeConfig::from_value(&c).unwrap().spot.unwrap();
        assert_eq!(spot.max_price.as_deref(), Some("0.05"));
        assert_eq!(spot.spot_instance_type.as_deref(), Some("one-time"));
        assert_eq!(spot.instance_interruption_behavior.as_deref(), Some("terminate"));
        // A YAML number is a price too.
        c["InstanceMarketOptions"] = json!({"MarketType": "spot", "SpotOptions": {"MaxPrice": 0.1}});
        let spot = Ec2NodeConfig::from_value(&c).unwrap().spot.unwrap();
        assert_eq!(spot.max_price.as_deref(), Some("0.1"));
    }

    #[test]
    fn spot_market_errors_name_the_key() {
        let at = |market: serde_json::Value| {
            let c = json!({"InstanceType": "m5.large", "ImageId": "ami-1", "InstanceMarketOptions": market});
            let e = Ec2NodeConfig::from_value(&c).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            (e.location().unwrap().path.clone(), e.to_string())
        };
        let (path, _) = at(json!("spot"));
        assert_eq!(path, "node_config.InstanceMarketOptions");
        let (path, text) = at(json!({"MarketType": "capacity-block"}));
        assert_eq!(path, "node_config.InstanceMarketOptions.MarketType");
        assert!(text.contains("capacity-block"), "{text}");
        let (path, _) = at(json!({"SpotOptions": {}}));
        assert_eq!(path, "node_config.InstanceMarketOptions.MarketType");
        let (path, _) = at(json!({"MarketType": "spot", "Spot": {}}));
        assert_eq!(path, "node_config.InstanceMarketOptions.Spot");
        let (path, _) = at(json!({"MarketType": "spot", "SpotOptions": "cheap"}));
        assert_eq!(path, "node_config.InstanceMarketOptions.SpotOptions");
        let (path, _) = at(json!({"MarketType": "spot", "SpotOptions": {"MaxPrice": "free"}}));
        assert_eq!(path, "node_config.InstanceMarketOptions.SpotOptions.MaxPrice");
        let (path, _) = at(json!({"MarketType": "spot", "SpotOptions": {"MaxPrice": -1}}));
        assert_eq!(path, "node_config.InstanceMarketOptions.SpotOptions.MaxPrice");
        let (path, text) =
            at(json!({"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "persistent"}}));
        assert_eq!(
            path,
            "node_config.InstanceMarketOptions.SpotOptions.SpotInstanceType"
        );
        assert!(text.contains("persistent"), "{text}");
        let (path, _) = at(json!({
            "MarketType": "spot", "SpotOptions": {"InstanceInterruptionBehavior": "stop"}
        }));
        assert_eq!(
            path,
            "node_config.InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"
        );
        let (path, _) = at(json!({"MarketType": "spot", "SpotOptions": {"BlockDurationMinutes": 60}}));
        assert_eq!(
            path,
            "node_config.InstanceMarketOptions.SpotOptions.BlockDurationMinutes"
        );
    }

    #[test]
    fn reads_block_device_mappings_as_the_templates_write_them() {
        let c = Ec2NodeConfig::from_value(&json!({
            "InstanceType": "m5.2xlarge",
            "BlockDeviceMappings": [
                {"DeviceName": "/dev/sda1",
                 "Ebs": {"VolumeSize": 100, "VolumeType": "gp3", "DeleteOnTermination": true,
                         "Iops": 3000, "Throughput": 125, "Encrypted": true}},
                {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"},
                {"DeviceName": "/dev/sdc", "NoDevice": ""}
            ]
        }))
        .unwrap();
        let m = &c.block_device_mappings;
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].device_name, "/dev/sda1");
        let ebs = m[0].ebs.as_ref().unwrap();
        assert_eq!(ebs.volume_size, Some(100));
        assert_eq!(ebs.volume_type.as_deref(), Some("gp3"));
        assert_eq!(ebs.delete_on_termination, Some(true));
        assert_eq!(
            (ebs.iops, ebs.throughput, ebs.encrypted),
            (Some(3000), Some(125), Some(true))
        );
        assert_eq!(m[1].virtual_name.as_deref(), Some("ephemeral0"));
        assert_eq!(m[2].no_device.as_deref(), Some(""));
    }

    #[test]
    fn block_device_mapping_errors_name_the_item_and_key() {
        let cases = [
            (
                json!({"Ebs": {"VolumeSize": 10}}),
                "node_config.BlockDeviceMappings[0].DeviceName",
            ),
            (
                json!({"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": "big"}}),
                "node_config.BlockDeviceMappings[0].Ebs.VolumeSize",
            ),
            (
                json!({"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": -5}}),
                "node_config.BlockDeviceMappings[0].Ebs.VolumeSize",
            ),
            (
                json!({"DeviceName": "/dev/sda1", "Ebs": {"VolumeType": "ssd"}}),
                "node_config.BlockDeviceMappings[0].Ebs.VolumeType",
            ),
            (
                json!({"DeviceName": "/dev/sda1", "Ebs": {"Size": 10}}),
                "node_config.BlockDeviceMappings[0].Ebs.Size",
            ),
            (
                json!({"DeviceName": "/dev/sda1", "Disk": {}}),
                "node_config.BlockDeviceMappings[0].Disk",
            ),
            (json!("/dev/sda1"), "node_config.BlockDeviceMappings[0]"),
        ];
        for (item, path) in cases {
            let e = Ec2NodeConfig::from_value(&json!({
                "InstanceType": "m5.large", "BlockDeviceMappings": [item]
            }))
            .unwrap_err();
            assert_eq!(e.location().unwrap().path, path, "{e:#}");
        }
        let e = Ec2NodeConfig::from_value(&json!({"InstanceType": "m5.large", "BlockDeviceMappings": {}}))
            .unwrap_err();
        assert_eq!(e.location().unwrap().path, "node_config.BlockDeviceMappings");
    }
}
