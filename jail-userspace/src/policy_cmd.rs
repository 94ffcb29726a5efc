//! `claude-jail policy [--config FILE] [--json]`: print the effective policy, each entry with
//! where it came from, and exit non-zero on an invalid file. Any readable file is accepted
//! (`Trust::Any`): this only checks, it launches nothing.
use std::{ffi::OsString, fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context;
use serde_json::json;

use crate::{
    conf::{self, Conf, JailSwitch, Trust},
    hostnet::HostNet,
    policy::Policy,
};

/// The proxy variables whose host the warnings check, in both spellings curl accepts.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

pub fn run(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let path = conf::conf_path(config, std::env::var_os(conf::ENV_CONF).as_deref());
    let conf = conf::load(&path, Trust::Any)?;
    let switch = conf::jail_enabled(&conf, std::env::var_os(conf::ENV_EGRESS_JAIL).as_deref())?;
    let host = HostNet::read().context("reading the host's addresses and routes")?;
    let proxies = proxy_env(|v| std::env::var_os(v));
    let report = Report::new(&conf, &switch, &host, &proxies);
    if json {
        println!("{:#}", report.json());
    } else {
        print!("{}", report.text());
    }
    for w in &report.warnings {
        eprintln!("claude-jail: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `(variable, value)` for each proxy variable set (non-UTF-8 values cannot name a host).
fn proxy_env(get: impl Fn(&str) -> Option<OsString>) -> Vec<(String, String)> {
    PROXY_VARS
        .iter()
        .filter_map(|v| Some((v.to_string(), get(v)?.into_string().ok()?)))
        .filter(|(_, val)| !val.is_empty())
        .collect()
}

/// Everything `policy` prints, computed once for both formats.
struct Report<'a> {
    conf: &'a Conf,
    switch: &'a JailSwitch,
    host: &'a HostNet,
    policy: Policy,
    warnings: Vec<String>,
}

impl<'a> Report<'a> {
    fn new(
        conf: &'a Conf,
        switch: &'a JailSwitch,
        host: &'a HostNet,
        proxies: &[(String, String)],
    ) -> Report<'a> {
        let policy = Policy::build(conf, host);
        let mut warnings = policy.warnings(proxies);
        if let Some(w) = policy.map_entries().over_capacity() {
            warnings.push(format!("the policy does not fit the maps: {w}"));
        }
        Report {
            conf,
            switch,
            host,
            policy,
            warnings,
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
        for (id, r) in self.policy.rules().iter().enumerate() {
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
            .rules()
            .iter()
            .enumerate()
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
            "digest": self.policy.digest(),
            "warnings": self.warnings,
        })
    }
}
