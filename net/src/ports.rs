//! Published ports: the mapping type (from `berth_config`, so the config and the network
//! layer share one parser) and the conflict check over every container's mappings.

pub use berth_config::{PortMapping, Proto};

/// Two mappings that cannot both be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port {second} of {second_owner} conflicts with port {first} of {first_owner} (the same host port and protocol on the same address, or on every address)")]
pub struct PortConflict {
    /// Who has the first one.
    pub first_owner: String,
    /// The first mapping.
    pub first: PortMapping,
    /// Who has the second one.
    pub second_owner: String,
    /// The second mapping.
    pub second: PortMapping,
}

/// Checks a set of mappings, each with its owner (a container name), for two that claim the
/// same host port: the same protocol and port on the same address, or on any address when
/// one of them listens on every address (`0.0.0.0`). Returns the first conflict in order.
pub fn check<'a, I>(mappings: I) -> Result<(), PortConflict>
where
    I: IntoIterator<Item = (&'a str, &'a PortMapping)>,
{
    let mut seen: Vec<(&str, &PortMapping)> = Vec::new();
    for (owner, m) in mappings {
        if let Some((first_owner, first)) = seen.iter().find(|(_, p)| p.conflicts_with(m)) {
            return Err(PortConflict {
                first_owner: first_owner.to_string(),
                first: **first,
                second_owner: owner.to_string(),
                second: *m,
            });
        }
        seen.push((owner, m));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortMapping {
        s.parse().unwrap()
    }

    #[test]
    fn conflicts_name_both_owners() {
        let a = [p("8080:80"), p("5353:53/udp")];
        let b = [p("8081:80"), p("5353:53/tcp")];
        let all: Vec<(&str, &PortMapping)> = a
            .iter()
            .map(|m| ("web", m))
            .chain(b.iter().map(|m| ("api", m)))
            .collect();
        check(all.iter().copied()).unwrap();

        let c = [p("127.0.0.1:8080:9000")];
        let e = check(all.iter().copied().chain(c.iter().map(|m| ("admin", m)))).unwrap_err();
        assert_eq!(e.first_owner, "web");
        assert_eq!(e.second_owner, "admin");
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:8080:9000 of admin"), "{text}");
        assert!(text.contains("8080:80 of web"), "{text}");

        // The same container publishing one port twice.
        let twice = [p("9000:1"), p("9000:2")];
        let e = check(twice.iter().map(|m| ("x", m))).unwrap_err();
        assert_eq!(
            (e.first_owner.as_str(), e.second_owner.as_str()),
            ("x", "x")
        );

        // Different specific addresses do not clash.
        let two_ips = [p("127.0.0.1:53:53/udp"), p("127.0.0.2:53:53/udp")];
        check(two_ips.iter().map(|m| ("dns", m))).unwrap();
    }
}
