//! The two policies of one jail: the jail's own and pasta's (each instance of the programs has
//! its own maps), numbered with the jail's rule ids.
use std::net::IpAddr;

use anyhow::Result;
use ipnet::IpNet;

use super::{Policy, RuleIds, Source};
use crate::{
    conf::{AllowEntry, Conf, PortSpec, Proto},
    hostnet::HostNet,
    pasta,
};

/// The jail's policy and pasta's, numbered with `ids` (the jail's rule ids as saved; empty for
/// a jail whose maps hold nothing yet), and the table of ids to save before their maps are
/// written.
///
/// The jail's adds pasta's DNS forwarder (port 53 only) and the jail's own addresses (`own`):
/// pasta copies the host's address into the jail's namespace, where it is local, so traffic to
/// it never leaves the jail (a published connection's replies go there). pasta's adds the
/// host's resolvers (port 53 only) and, for each `publish-port`, that port on the jail's own
/// addresses: pasta carries a published connection in by connecting, inside the jail's
/// namespace, to the jail's address.
pub fn policies(
    conf: &Conf,
    host: &HostNet,
    resolvers: &[IpAddr],
    own: &[IpAddr],
    ids: &RuleIds,
) -> Result<(Policy, Policy, RuleIds)> {
    let port = |ip: IpAddr, port, proto| AllowEntry {
        net: IpNet::from(ip),
        port: Some(PortSpec {
            port,
            proto: Some(proto),
        }),
    };
    let fwd = IpAddr::V4(pasta::DNS_FORWARDER);
    let both = [Proto::Udp, Proto::Tcp];
    let own_allows = own.iter().map(|&a| {
        (
            AllowEntry {
                net: IpNet::from(a),
                port: None,
            },
            Source::Builtin("the jail's own address, local in its namespace"),
        )
    });
    // Numbered once each, below: the rules alone until then.
    let base = Policy::unnumbered(conf, host);
    let jail = base.clone().with_extra_rules(
        both.map(|p| (port(fwd, 53, p), Source::Builtin("pasta's DNS forwarder")))
            .into_iter()
            .chain(own_allows),
    );
    let resolver_allows = resolvers
        .iter()
        .flat_map(|&r| both.map(|p| (port(r, 53, p), Source::Resolver)));
    let published = conf.publish_ports.iter().flat_map(|l| {
        let protos: Vec<Proto> = l.value.proto.map_or(both.to_vec(), |p| vec![p]);
        own.iter().flat_map(move |&a| {
            protos.clone().into_iter().map(move |p| {
                (
                    port(a, l.value.port, p),
                    Source::Builtin("publish-port, into the jail"),
                )
            })
        })
    });
    // pasta's policy cannot deny the host's loopback: its programs judge destinations, not
    // namespaces, and pasta talks to the jail's loopback too (the inner side of each
    // `host-port`). The host's loopback is closed by pasta's arguments instead (no mapping).
    let pasta = base.with_extra_rules(resolver_allows.chain(published));
    // One numbering for both: a rule they share has one id.
    let mut n = ids.numbering();
    let jail = jail.numbered(&mut n)?;
    let pasta = pasta.numbered(&mut n)?;
    Ok((jail, pasta, n.finish()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::conf::parse;

    fn conf(text: &str) -> Conf {
        parse(Path::new("/c"), text.as_bytes()).unwrap()
    }

    /// A reload that inserts a line above a deny: the deny's map entry takes a new id (another
    /// conf line), the rules a reload leaves as they were keep theirs, and the old id still
    /// names the rule as it was.
    #[test]
    fn a_moved_rule_gets_a_new_id_and_the_others_keep_theirs() {
        let h = HostNet::default();
        let dns: [IpAddr; 1] = ["10.0.0.53".parse().unwrap()];
        let (j1, p1, ids1) = policies(
            &conf("deny-ip = 10.1.2.0/24\n"),
            &h,
            &dns,
            &[],
            &RuleIds::default(),
        )
        .unwrap();
        let key = (24, crate::addr::ne4("10.1.2.0".parse().unwrap()));
        let default10 = (8, crate::addr::ne4("10.0.0.0".parse().unwrap()));
        let (j2, p2, ids2) = policies(
            &conf("allow-ip = 10.1.2.5\n\ndeny-ip = 10.1.2.0/24\n"),
            &h,
            &dns,
            &[],
            &ids1,
        )
        .unwrap();
        let (old, new) = (j1.map_entries().deny4[&key], j2.map_entries().deny4[&key]);
        assert_ne!(old, new);
        assert_eq!(ids2.describe(old), Some("deny 10.1.2.0/24 (conf /c:1)"));
        assert_eq!(ids2.describe(new), Some("deny 10.1.2.0/24 (conf /c:3)"));
        assert_eq!(
            j1.map_entries().deny4[&default10],
            j2.map_entries().deny4[&default10],
            "the default deny kept its id"
        );
        // pasta's policy shares the numbering: the same rule, the same id.
        assert_eq!(p2.map_entries().deny4[&key], new);
        assert_eq!(p1.map_entries().deny4[&key], old);
        // Every id in the maps is in the table saved with them.
        for p in [&j2, &p2] {
            for (id, r) in p.rules_with_ids() {
                assert_eq!(ids2.describe(id), Some(r.to_string().as_str()));
            }
        }
    }
}
