//! The compact binary encoding of heartbeat rows in Redis. The format is documented in
//! the [state module docs](super) ("Heartbeat rows"); `the_layout_is_the_documented_one`
//! below checks the two agree.

use crate::node::NodeKind;
use crate::resources::Resources;

use super::model::NodeHeartbeat;

/// The first byte of a format-1 heartbeat row.
pub(crate) const HEARTBEAT_TAG: u8 = 0xC1;

const SEQ_PRESENT: u8 = 1;

/// Encodes a heartbeat row. Fails when a string is longer than 65,535 bytes or there
/// are more than 65,535 resources, with what was too long.
pub(crate) fn encode_heartbeat(hb: &NodeHeartbeat) -> Result<Vec<u8>, String> {
    let strings = hb.node_id.len() + hb.node_ip.len() + hb.node_type.len();
    let resources = |r: &Resources| r.iter().map(|(k, _)| k.len() + 10).sum::<usize>();
    let mut out = Vec::with_capacity(
        15 + 6 + strings + 4 + resources(&hb.total_resources) + resources(&hb.available_resources),
    );
    out.push(HEARTBEAT_TAG);
    out.push(match hb.node_kind {
        NodeKind::Head => 0,
        NodeKind::Worker => 1,
        NodeKind::Unmanaged => 2,
    });
    out.push(if hb.seq_id.is_some() { SEQ_PRESENT } else { 0 });
    out.extend_from_slice(&hb.seq_id.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hb.heartbeat_time.to_le_bytes());
    put_str(&mut out, "node_id", &hb.node_id)?;
    put_str(&mut out, "node_ip", &hb.node_ip)?;
    put_str(&mut out, "node_type", &hb.node_type)?;
    put_resources(&mut out, "total_resources", &hb.total_resources)?;
    put_resources(&mut out, "available_resources", &hb.available_resources)?;
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, what: &str, len: usize) -> Result<(), String> {
    let len = u16::try_from(len).map_err(|_| format!("{what} is longer than 65535 ({len})"))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, what: &str, s: &str) -> Result<(), String> {
    put_len(out, what, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_resources(out: &mut Vec<u8>, what: &str, r: &Resources) -> Result<(), String> {
    put_len(out, what, r.len())?;
    for (name, amount) in r.iter() {
        put_str(out, what, name)?;
        out.extend_from_slice(&amount.to_le_bytes());
    }
    Ok(())
}

/// The node id bytes of a format-1 heartbeat row without decoding the rest (empty when
/// the row is too short to hold one; [`decode_heartbeat`] then reports the damage).
pub(crate) fn heartbeat_node_id(bytes: &[u8]) -> &[u8] {
    let mut r = Reader(bytes);
    r.take(15)
        .and_then(|_| r.len())
        .and_then(|n| r.take(n))
        .unwrap_or(&[])
}

/// Decodes a format-1 heartbeat row; the error says what is wrong with it.
pub(crate) fn decode_heartbeat(bytes: &[u8]) -> Result<NodeHeartbeat, &'static str> {
    let mut r = Reader(bytes);
    if r.take(1)? != [HEARTBEAT_TAG] {
        return Err("unknown row format");
    }
    let node_kind = match r.take(1)?[0] {
        0 => NodeKind::Head,
        1 => NodeKind::Worker,
        2 => NodeKind::Unmanaged,
        _ => return Err("unknown node kind"),
    };
    let flags = r.take(1)?[0];
    if flags & !SEQ_PRESENT != 0 {
        return Err("unknown flags");
    }
    let seq = u32::from_le_bytes(r.array()?);
    let heartbeat_time = f64::from_le_bytes(r.array()?);
    let node_id = r.str()?.to_owned();
    let node_ip = r.str()?.to_owned();
    let node_type = r.str()?.to_owned();
    let total_resources = r.resources()?;
    let available_resources = r.resources()?;
    if !r.0.is_empty() {
        return Err("bytes after the last field");
    }
    Ok(NodeHeartbeat {
        node_id,
        node_ip,
        node_kind,
        node_type,
        seq_id: (flags & SEQ_PRESENT != 0).then_some(seq),
        heartbeat_time,
        total_resources,
        available_resources,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("row is cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let bytes = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(bytes);
        Ok(a)
    }

    fn len(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(u16::from_le_bytes(self.array()?)))
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "a string is not UTF-8")
    }

    fn resources(&mut self) -> Result<Resources, &'static str> {
        let n = self.len()?;
        let mut r = Resources::new();
        for _ in 0..n {
            let name = self.str()?;
            let amount = f64::from_le_bytes(self.array()?);
            r.set(name, amount);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: "i-0123456789abcdef0".into(),
            node_ip: "10.0.1.2".into(),
            node_kind: NodeKind::Worker,
            node_type: "worker.cpu".into(),
            seq_id: Some(7),
            heartbeat_time: 1_764_000_000.123_456,
            total_resources: Resources::from_pairs([("CPU", 16.0), ("memory", 68_719_476_736.0)]),
            available_resources: Resources::from_pairs([("CPU", 0.5), ("GPU", 1.0)]),
        }
    }

    #[test]
    fn rows_round_trip_exactly() {
        let mut hb = row();
        assert_eq!(decode_heartbeat(&encode_heartbeat(&hb).unwrap()), Ok(hb.clone()));
        hb.seq_id = None;
        hb.node_kind = NodeKind::Unmanaged;
        hb.node_type = "wörker.ünicode".into();
        hb.available_resources = Resources::new();
        assert_eq!(decode_heartbeat(&encode_heartbeat(&hb).unwrap()), Ok(hb.clone()));
        hb.node_kind = NodeKind::Head;
        hb.seq_id = Some(0);
        hb.node_ip = String::new();
        assert_eq!(decode_heartbeat(&encode_heartbeat(&hb).unwrap()), Ok(hb));
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let hb = NodeHeartbeat {
            node_id: "n".into(),
            node_ip: "ip".into(),
            node_kind: NodeKind::Head,
            node_type: "t".into(),
            seq_id: Some(1),
            heartbeat_time: 2.0,
            total_resources: Resources::from_pairs([("CPU", 4.0)]),
            available_resources: Resources::new(),
        };
        let mut want = vec![0xC1, 0, 1, 1, 0, 0, 0];
        want.extend_from_slice(&2.0f64.to_le_bytes());
        want.extend_from_slice(&[1, 0, b'n', 2, 0, b'i', b'p', 1, 0, b't']);
        want.extend_from_slice(&[1, 0, 3, 0, b'C', b'P', b'U']);
        want.extend_from_slice(&4.0f64.to_le_bytes());
        want.extend_from_slice(&[0, 0]);
        assert_eq!(encode_heartbeat(&hb).unwrap(), want);
    }

    #[test]
    fn the_node_id_is_read_without_decoding() {
        assert_eq!(
            heartbeat_node_id(&encode_heartbeat(&row()).unwrap()),
            b"i-0123456789abcdef0"
        );
        assert_eq!(heartbeat_node_id(&[HEARTBEAT_TAG, 1, 0]), b"");
    }

    #[test]
    fn damaged_rows_are_refused() {
        let good = encode_heartbeat(&row()).unwrap();
        for cut in 0..good.len() {
            assert!(decode_heartbeat(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode_heartbeat(&longer), Err("bytes after the last field"));
        let mut kind = good.clone();
        kind[1] = 9;
        assert_eq!(decode_heartbeat(&kind), Err("unknown node kind"));
        let mut flags = good.clone();
        flags[2] = 2;
        assert_eq!(decode_heartbeat(&flags), Err("unknown flags"));
        assert_eq!(decode_heartbeat(b"{\"node_id\":1}"), Err("unknown row format"));
        let mut utf8 = good;
        utf8[17] = 0xFF; // the first byte of the node id
        assert_eq!(decode_heartbeat(&utf8), Err("a string is not UTF-8"));
    }

    #[test]
    fn too_long_strings_are_refused() {
        let mut hb = row();
        hb.node_type = "x".repeat(70_000);
        assert!(encode_heartbeat(&hb).unwrap_err().contains("node_type"));
    }
}
