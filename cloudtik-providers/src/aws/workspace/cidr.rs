//! IPv4 range arithmetic: overlaps, free subnet blocks, a range for a peered VPC.

use super::*;

/// Whether two IPv4 ranges share an address (false when either is not an IPv4 range).
pub(super) fn overlaps(a: &str, b: &str) -> bool {
    let span = |c: &str| {
        parse_cidr(c).map(|(ip, bits)| {
            let start = u64::from(ip);
            (start, start + (1u64 << (32 - bits)))
        })
    };
    match (span(a), span(b)) {
        (Some((s1, e1)), Some((s2, e2))) => s1 < e2 && s2 < e1,
        _ => false,
    }
}

/// The range of a VPC to be peered: `configured` when it overlaps none of `used`, else
/// the first `10.X.0.0/16` that overlaps none.
pub(super) fn peering_cidr(configured: &str, used: &[&str]) -> Option<String> {
    std::iter::once(configured.to_string())
        .chain((0..=255).map(|x| format!("10.{x}.0.0/16")))
        .find(|c| used.iter().all(|u| !overlaps(c, u)))
}

/// An IPv4 range as (network address, prefix length).
pub(super) fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    Some((u32::from(ip) & mask, bits))
}

/// `count` blocks of size `/prefix` inside `range` that overlap none of `used`, lowest
/// first; `None` when there are not enough.
pub(super) fn free_blocks(range: &str, used: &[&str], prefix: u8, count: usize) -> Option<Vec<String>> {
    let (base, bits) = parse_cidr(range)?;
    if bits > prefix {
        return None;
    }
    let size = 1u64 << (32 - prefix);
    let blocks = 1u64 << (prefix - bits);
    let used: Vec<(u64, u64)> = used
        .iter()
        .filter_map(|c| parse_cidr(c))
        .map(|(ip, b)| (u64::from(ip), u64::from(ip) + (1u64 << (32 - b))))
        .collect();
    let mut free = Vec::new();
    for i in 0..blocks {
        if free.len() == count {
            break;
        }
        let start = u64::from(base) + i * size;
        let end = start + size;
        if used.iter().all(|(s, e)| end <= *s || start >= *e) {
            let ip = Ipv4Addr::from(u32::try_from(start).ok()?);
            free.push(format!("{ip}/{prefix}"));
        }
    }
    (free.len() == count).then_some(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_blocks_skip_used_ranges() {
        assert_eq!(
            free_blocks("10.0.0.0/16", &[], 24, 3).unwrap(),
            vec!["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"]
        );
        assert_eq!(
            free_blocks("10.0.0.0/16", &["10.0.0.0/23", "10.0.3.128/25"], 24, 2).unwrap(),
            vec!["10.0.2.0/24", "10.0.4.0/24"]
        );
        assert_eq!(free_blocks("172.31.0.0/24", &["172.31.0.0/26"], 24, 1), None);
        assert_eq!(free_blocks("10.0.0.0/23", &[], 24, 2).unwrap().len(), 2);
        assert_eq!(free_blocks("10.0.0.0/23", &[], 24, 3), None);
    }

    #[test]
    fn a_peered_range_overlaps_nothing_the_working_vpc_uses() {
        assert!(overlaps("10.0.0.0/16", "10.0.5.0/24"));
        assert!(overlaps("10.0.5.0/24", "10.0.0.0/8"));
        assert!(!overlaps("10.1.0.0/16", "10.0.0.0/16"));
        assert!(!overlaps("10.1.0.0/16", "pl-123"));
        assert_eq!(
            peering_cidr("10.0.0.0/16", &["172.31.0.0/16"]).unwrap(),
            "10.0.0.0/16"
        );
        assert_eq!(
            peering_cidr("10.0.0.0/16", &["10.0.0.0/16"]).unwrap(),
            "10.1.0.0/16"
        );
        assert_eq!(
            peering_cidr("10.0.0.0/16", &["10.0.0.0/15", "10.2.128.0/17"]).unwrap(),
            "10.3.0.0/16"
        );
        assert_eq!(peering_cidr("10.0.0.0/16", &["10.0.0.0/8"]), None);
    }
}
