//! Client IP lists: which addresses may use a route. A list is compiled into sorted,
//! merged ranges, so a lookup is a binary search whatever the number of entries (a file of
//! thousands of blocks costs what a list of three does).

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use portcullis_config::{IpListEntry, IpRulesConfig};

/// A set of addresses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// The addresses `entries` list; `at` is the list's key path. `Err` holds every problem
    /// found, each with its key (and line, for a file).
    pub fn build(entries: &[IpListEntry], at: &str) -> Result<IpSet, Vec<(String, String)>> {
        let mut nets = Vec::new();
        let mut errors = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match entry {
                IpListEntry::Net(text) => match parse_net(text) {
                    Ok(net) => nets.push(net),
                    Err(e) => errors.push((format!("{at}[{i}]"), e)),
                },
                IpListEntry::File { file } => match read_file(file, &mut nets) {
                    Ok(()) => {}
                    Err(e) => errors.push((format!("{at}[{i}].file"), e)),
                },
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut set = IpSet::default();
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(n) => set.v4.push((n.network().into(), n.broadcast().into())),
                IpNet::V6(n) => set.v6.push((n.network().into(), n.broadcast().into())),
            }
        }
        Ok(set)
    }

    /// Whether `ip` is in the set (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
            let i = ranges.partition_point(|r| r.0 <= x);
            i > 0 && x <= ranges[i - 1].1
        }
        match ip.to_canonical() {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// An address or a CIDR block whose host bits are zero (`10.0.0.1/8` is refused: it is
/// more likely a typo than a way of writing `10.0.0.0/8`).
fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    let net: IpNet = text.parse().map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
    if net.trunc() != net {
        return Err(format!("`{text}` has host bits set; the block is `{}`", net.trunc()));
    }
    // An IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps: clients are
    // looked up by their IPv4 address.
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map(IpNet::V4).map_err(|e| e.to_string());
    }
    Ok(net)
}

fn read_file(file: &Path, nets: &mut Vec<IpNet>) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if !line.is_empty() {
            nets.push(parse_net(line).map_err(|e| format!("{}, line {}: {e}", file.display(), n + 1))?);
        }
    }
    Ok(())
}

/// A route's client IP rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRules {
    allow: Option<IpSet>,
    deny: IpSet,
}

impl IpRules {
    /// Compiles `config`; `at` is its key path (`routes[0].client_ips`).
    pub fn build(config: &IpRulesConfig, at: &str) -> Result<IpRules, Vec<(String, String)>> {
        let allow = IpSet::build(&config.allow, &format!("{at}.allow"));
        let deny = IpSet::build(&config.deny, &format!("{at}.deny"));
        match (allow, deny) {
            (Ok(allow), Ok(deny)) => Ok(IpRules { allow: (!config.allow.is_empty()).then_some(allow), deny }),
            (a, d) => Err(a.err().into_iter().chain(d.err()).flatten().collect()),
        }
    }

    /// Whether a client at `ip` may use the route: not denied, and allowed when there is an
    /// allow list.
    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpListEntry {
        IpListEntry::Net(s.into())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lookups_follow_the_blocks() {
        let set = IpSet::build(&[net("10.0.0.0/8"), net("192.0.2.7"), net("10.1.0.0/16"), net("2001:db8::/32")], "x")
            .unwrap();
        for yes in ["10.0.0.0", "10.255.255.255", "10.1.2.3", "192.0.2.7", "2001:db8::1", "::ffff:10.2.3.4"] {
            assert!(set.contains(ip(yes)), "{yes}");
        }
        for no in ["9.255.255.255", "11.0.0.0", "192.0.2.6", "192.0.2.8", "2001:db9::", "::", "::a00:1"] {
            assert!(!set.contains(ip(no)), "{no}");
        }
        // Overlapping blocks were merged.
        assert_eq!(set.v4.len(), 2);
        // An IPv4-mapped block holds the IPv4 addresses it maps, however the client is written.
        let mapped = IpSet::build(&[net("::ffff:10.0.0.0/104")], "x").unwrap();
        assert!(mapped.contains(ip("10.1.2.3")) && mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(!mapped.contains(ip("11.0.0.1")));
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let rules = IpRules::build(&IpRulesConfig { allow: vec![net("10.0.0.0/8")], deny: vec![net("10.0.0.5")] }, "r")
            .unwrap();
        assert!(rules.admits(ip("10.0.0.4")));
        assert!(!rules.admits(ip("10.0.0.5")));
        assert!(!rules.admits(ip("192.0.2.1")));
        let deny_only = IpRules::build(&IpRulesConfig { allow: vec![], deny: vec![net("10.0.0.5")] }, "r").unwrap();
        assert!(deny_only.admits(ip("192.0.2.1")));
        assert!(!deny_only.admits(ip("::ffff:10.0.0.5")));
    }

    #[test]
    fn mistakes_are_named_by_key_and_line() {
        let dir = std::env::temp_dir().join(format!("ip-list-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("allow.txt");
        std::fs::write(&file, "# office\n10.0.0.0/8 # lan\n\n192.0.2.1/24\n").unwrap();
        let errors = IpSet::build(
            &[net("10.0.0.0/8"), net("banana"), IpListEntry::File { file: file.clone() }, net("10.0.0.1/8")],
            "routes[0].client_ips.allow",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].0, "routes[0].client_ips.allow[1]");
        assert_eq!(errors[1].0, "routes[0].client_ips.allow[2].file");
        assert!(errors[1].1.contains("line 4") && errors[1].1.contains("192.0.2.0/24"), "{errors:?}");
        assert!(errors[2].1.contains("host bits"), "{errors:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
