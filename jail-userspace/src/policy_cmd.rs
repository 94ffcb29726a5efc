//! `claude-jail policy [--config FILE] [--json]`: print the effective policy, each entry with
//! where it came from, and exit non-zero on an invalid file or a policy the maps cannot hold (as
//! `run` and `reload` refuse it). Any readable file is accepted
//! (`Trust::Any`): this only checks, it launches nothing.
use std::{ffi::OsString, fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context;
use serde_json::json;

use crate::{
    conf::{self, Conf, JailSwitch, Trust},
    hostnet::HostNet,
    policy::Policy,
    user,
};

pub fn command(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let caller = crate::caller::Caller::current();
    let env_conf = std::env::var_os(conf::ENV_CONF);
    caller.check_conf_choice(config.as_deref(), env_conf.as_deref())?;
    let path = conf::conf_path(config, env_conf.as_deref());
    let conf = conf::load(&path, Trust::Any).map_err(|e| e.shown_to(caller.delegated_uid()))?;
    let switch = conf::jail_enabled(&conf, std::env::var_os(conf::ENV_EGRESS_JAIL).as_deref())?;
    let host = HostNet::read().context("reading the host's addresses and routes")?;
    let proxies = proxy_env(std::env::vars_os());
    let report = Report::new(&conf, &switch, &host, &proxies);
    if json {
        println!("{:#}", report.json());
    } else {
        print!("{}", report.text());
    }
    for w in &report.warnings {
        eprintln!("claude-jail: warning: {w}");
    }
    for n in &report.notes {
        eprintln!("claude-jail: note: {n}");
    }
    // `run` and `reload` refuse such a policy: so does the check, with the same message.
    if let Some(msg) = &report.over_capacity {
        anyhow::bail!("{msg}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `(variable, value)` for each proxy variable set, sorted by name: the `*_proxy` variables that
/// reach the command ([`user::is_proxy_var`]) except `no_proxy`, which names hosts *not* to
/// proxy. Non-UTF-8 values cannot name a host.
fn proxy_env(env: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, val)| Some((k.into_string().ok()?, val.into_string().ok()?)))
        .filter(|(k, val)| {
            user::is_proxy_var(k) && !k.eq_ignore_ascii_case("no_proxy") && !val.is_empty()
        })
        .collect();
    v.sort();
    v
}

/// Everything `policy` prints, computed once for both formats.
struct Report<'a> {
    conf: &'a Conf,
    switch: &'a JailSwitch,
    host: &'a HostNet,
    policy: Policy,
    warnings: Vec<String>,
    /// Proxies that could not be checked (named by host name).
    notes: Vec<String>,
    /// Why the policy does not fit the maps (an error: `run` and `reload` refuse it).
    over_capacity: Option<String>,
}

impl<'a> Report<'a> {
    fn new(
        conf: &'a Conf,
        switch: &'a JailSwitch,
        host: &'a HostNet,
        proxies: &[(String, String)],
    ) -> Report<'a> {
        let policy = Policy::build(conf, host);
        let warnings = policy.warnings(proxies);
        let notes = policy.proxy_notes(proxies);
        let over_capacity = policy.map_entries().over_capacity();
        Report {
            conf,
            switch,
            host,
            policy,
            warnings,
            notes,
            over_capacity,
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let found = if self.conf.found {
            ""
        } else {
            " (not found: all defaults)"
        };
        // Writing to a String cannot fail.
        let _ = writeln!(s, "config: {}{found}", self.conf.path.display());
        let _ = writeln!(
            s,
            "egress jail: {} ({})",
            if self.switch.enabled { "on" } else { "off" },
            self.switch.source
        );
        let _ = writeln!(
            s,
            "rule: an allow entry wins over every deny entry; a destination no entry matches is allowed"
        );
        for (id, r) in self.policy.rules_with_ids() {
            let _ = writeln!(
                s,
                "{id:>5}  {:<5}  {:<40}  {}",
                r.action.name(),
                r.target.to_string(),
                r.source
            );
        }
        for (net, dev) in &self.host.default_splits {
            let via = dev
                .as_deref()
                .map(|d| format!(" via {d}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "note: host route {net}{via} is a piece of a default route and is not denied"
            );
        }
        for n in self.policy.skipped_host_denies() {
            let _ = writeln!(s, "note: {n}");
        }
        let path = self.conf.path.display();
        for p in &self.conf.host_ports {
            let _ = writeln!(s, "host-port     {:<10} conf {path}:{}", p.value, p.line);
        }
        for p in &self.conf.publish_ports {
            let _ = writeln!(s, "publish-port  {:<10} conf {path}:{}", p.value, p.line);
        }
        for p in &self.conf.allow_sockets {
            let _ = writeln!(
                s,
                "allow-socket  {} conf {path}:{}",
                p.value.display(),
                p.line
            );
        }
        let _ = writeln!(s, "digest: {}", self.policy.digest());
        s
    }

    fn json(&self) -> serde_json::Value {
        let path = self.conf.path.display().to_string();
        let rules: Vec<_> = self
            .policy
            .rules_with_ids()
            .map(|(id, r)| {
                json!({
                    "id": id,
                    "action": r.action.name(),
                    "target": r.target.net.to_string(),
                    "port": r.target.port.map(|p| p.port),
                    "proto": r.target.port.and_then(|p| p.proto).map(|p| p.name()),
                    "source": r.source.to_string(),
                })
            })
            .collect();
        let ports = |v: &[conf::Located<conf::PortSpec>]| -> Vec<_> {
            v.iter()
                .map(|p| {
                    json!({
                        "port": p.value.port,
                        "proto": p.value.proto.map(|x| x.name()),
                        "source": format!("conf {path}:{}", p.line),
                    })
                })
                .collect()
        };
        json!({
            "config": path,
            "config_found": self.conf.found,
            "egress_jail": { "enabled": self.switch.enabled, "source": self.switch.source },
            "rules": rules,
            "host_ports": ports(&self.conf.host_ports),
            "publish_ports": ports(&self.conf.publish_ports),
            "allow_sockets": self.conf.allow_sockets.iter().map(|p| json!({
                "path": p.value.display().to_string(),
                "source": format!("conf {path}:{}", p.line),
            })).collect::<Vec<_>>(),
            "default_route_splits": self.host.default_splits.iter()
                .map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
            "skipped_host_denies": self.policy.skipped_host_denies(),
            "digest": self.policy.digest(),
            "warnings": self.warnings,
            "notes": self.notes,
            "error": self.over_capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{ffi::OsStr, path::Path};

    fn report_for(text: &str) -> (String, serde_json::Value, Vec<String>) {
        let c = conf::parse(Path::new("/etc/claude-sandbox.conf"), text.as_bytes()).unwrap();
        let sw = conf::jail_enabled(&c, None).unwrap();
        let h = HostNet::from_parts(
            vec![(
                "192.168.1.100".parse().unwrap(),
                "192.168.1.100".parse().unwrap(),
                24,
                "eth0".into(),
            )],
            vec![("0.0.0.0/1".parse().unwrap(), Some("tun0".into()))],
        );
        let r = Report::new(&c, &sw, &h, &[]);
        (r.text(), r.json(), r.warnings.clone())
    }

    #[test]
    fn text_names_the_file_the_switch_and_each_source() {
        let (t, _, w) = report_for(
            "egress-jail = 0\nallow-ip = 10.0.0.0/8\nallow-ip = 172.23.1.3:5064/udp\n\
             host-port = 8765\npublish-port = 3000/tcp\nallow-socket = /run/x.sock\n",
        );
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "config: /etc/claude-sandbox.conf");
        assert_eq!(lines[1], "egress jail: off (/etc/claude-sandbox.conf:1)");
        let has = |needle: &[&str]| t.lines().any(|l| needle.iter().all(|n| l.contains(n)));
        assert!(
            has(&["allow", "10.0.0.0/8", "conf /etc/claude-sandbox.conf:2"]),
            "{t}"
        );
        assert!(
            has(&[
                "allow",
                "172.23.1.3:5064/udp",
                "conf /etc/claude-sandbox.conf:3"
            ]),
            "{t}"
        );
        assert!(has(&["deny", "10.0.0.0/8", "default"]), "{t}");
        assert!(
            has(&["deny", "192.168.1.100/32", "host address on eth0"]),
            "{t}"
        );
        assert!(
            has(&["deny", "192.168.1.0/24", "host subnet of eth0"]),
            "{t}"
        );
        assert!(has(&["note: host route 0.0.0.0/1 via tun0"]), "{t}");
        assert!(
            has(&["host-port", "8765", ":4"]) && has(&["publish-port", "3000/tcp", ":5"]),
            "{t}"
        );
        assert!(has(&["allow-socket", "/run/x.sock", ":6"]), "{t}");
        assert!(lines.last().unwrap().starts_with("digest: "));
        assert_eq!(
            w,
            vec!["allow 10.0.0.0/8 (conf /etc/claude-sandbox.conf:2) covers the whole default deny range 10.0.0.0/8"]
        );
    }

    #[test]
    fn a_nat64_host_route_is_not_denied_and_says_so() {
        let c = conf::parse(Path::new("/c"), b"").unwrap();
        let sw = conf::jail_enabled(&c, None).unwrap();
        let h = HostNet::from_parts(
            vec![],
            vec![
                ("64:ff9b::/96".parse().unwrap(), Some("nat64".into())),
                ("::ffff:0:0/100".parse().unwrap(), None),
                ("64:ff9b::a00:0/104".parse().unwrap(), Some("nat64".into())),
            ],
        );
        let r = Report::new(&c, &sw, &h, &[]);
        let t = r.text();
        assert!(
            t.contains(
                "note: 64:ff9b::/96 (host route via nat64) is not denied: it carries IPv4 \
                 addresses and is judged as IPv4 0.0.0.0/0"
            ),
            "{t}"
        );
        assert!(
            t.contains("note: ::ffff:0.0.0.0/100 (host route) is not denied"),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.contains("deny") && l.contains("64:ff9b::a00:0/104")),
            "a /104 (IPv4 /8) is denied as usual: {t}"
        );
        assert_eq!(r.json()["skipped_host_denies"].as_array().unwrap().len(), 2);
        assert!(r.policy.decide("8.8.8.8".parse().unwrap(), 53, 17).allowed);
    }

    #[test]
    fn json_has_every_field() {
        let (_, j, _) = report_for("allow-ip = [fd00::5]:443/tcp\n");
        assert_eq!(j["config"], "/etc/claude-sandbox.conf");
        assert_eq!(j["egress_jail"]["enabled"], true);
        assert_eq!(j["egress_jail"]["source"], "default");
        let rules = j["rules"].as_array().unwrap();
        let r = rules.iter().find(|r| r["target"] == "fd00::5/128").unwrap();
        assert_eq!(r["action"], "allow");
        assert_eq!(r["port"], 443);
        assert_eq!(r["proto"], "tcp");
        assert_eq!(r["source"], "conf /etc/claude-sandbox.conf:1");
        assert!(rules
            .iter()
            .any(|r| r["source"] == "default" && r["target"] == "fc00::/7"));
        assert_eq!(j["digest"].as_str().unwrap().len(), 16);
        assert!(j["warnings"].as_array().unwrap().is_empty());
    }

    #[test]
    fn proxy_env_reads_every_proxy_variable_and_skips_empty_and_no_proxy() {
        let env = [
            ("http_proxy", "http://10.0.0.1:3128"),
            ("ALL_PROXY", ""),
            ("HTTPS_PROXY", "socks5://[fd00::1]"),
            ("ftp_proxy", "http://10.0.0.2:21"),
            ("socks_proxy", "socks5://10.0.0.3"),
            ("no_proxy", "10.0.0.9"),
            ("NO_PROXY", "10.0.0.9"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsStr::new(v).to_os_string()));
        let got = proxy_env(env);
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            got,
            vec![
                s("HTTPS_PROXY", "socks5://[fd00::1]"),
                s("ftp_proxy", "http://10.0.0.2:21"),
                s("http_proxy", "http://10.0.0.1:3128"),
                s("socks_proxy", "socks5://10.0.0.3"),
            ]
        );
    }

    #[test]
    fn a_proxy_named_by_host_name_is_noted_as_not_checked() {
        let c = conf::parse(Path::new("/c"), b"allow-ip = 10.0.0.2\n").unwrap();
        let sw = conf::jail_enabled(&c, None).unwrap();
        let h = HostNet::default();
        let proxies = vec![
            ("ftp_proxy".to_string(), "http://10.0.0.2:21".to_string()),
            (
                "https_proxy".to_string(),
                "http://u:secret@proxy.corp.example:3128".to_string(),
            ),
        ];
        let r = Report::new(&c, &sw, &h, &proxies);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("allows the proxy ftp_proxy="),
            "ftp_proxy is checked like the others: {:?}",
            r.warnings
        );
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        assert!(
            r.notes[0].contains("\"proxy.corp.example\"")
                && r.notes[0].contains("https_proxy")
                && r.notes[0].contains("not an IP literal")
                && !r.notes[0].contains("secret"),
            "{}",
            r.notes[0]
        );
        assert_eq!(r.json()["notes"][0], r.notes[0]);
    }

    #[test]
    fn a_policy_over_map_capacity_is_an_error_as_for_run() {
        // Each address:port entry takes two port-map entries (the entry and its marker).
        let n = jail_common::MAX_PORT_ENTRIES / 2 + 1;
        let mut text = String::new();
        for i in 0..n {
            let [_, b, c, d] = (i + 1).to_be_bytes();
            text.push_str(&format!("allow-ip = 10.{b}.{c}.{d}:443/tcp\n"));
        }
        let c = conf::parse(Path::new("/c"), text.as_bytes()).unwrap();
        let sw = conf::jail_enabled(&c, None).unwrap();
        let h = HostNet::default();
        let r = Report::new(&c, &sw, &h, &[]);
        let want = r.policy.map_entries().over_capacity();
        assert!(want.is_some());
        assert_eq!(r.over_capacity, want, "the message `run` refuses it with");
        assert!(r.warnings.is_empty(), "an error, not a warning");
        assert_eq!(r.json()["error"], serde_json::json!(want));
        let (_, j, _) = report_for("allow-ip = 10.0.0.1\n");
        assert!(j["error"].is_null());
    }

    #[test]
    fn an_invalid_file_is_an_error_naming_file_and_line() {
        let dir =
            std::env::temp_dir().join(format!("claude-jail-policy-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.conf");
        std::fs::write(&f, "allow-ip = 10.0.0.1\nallow-ip = 10.1.0.5/24\n").unwrap();
        let e = command(Some(f.clone()), false).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{}:2: 10.1.0.5/24 has host bits set: the network is 10.1.0.0/24",
                f.display()
            )
        );
    }
}
