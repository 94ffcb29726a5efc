//! Rule ids that keep naming the same rule across reloads.
//!
//! Every policy map entry holds the id of the rule that made it, and every refusal event the id
//! of the deny entry that matched. Within one jail, an id is handed out once, for one rule
//! description ("deny 10.1.2.0/24 (conf /etc/claude-sandbox.conf:3)": action, target and where
//! it came from), and never for another: a rule whose description a reload leaves as it was keeps
//! its id; a rule that changes, a conf line included, gets a new one. So an event read after a
//! reload, with the id the kernel put in it before, still names the rule that refused it.
//!
//! The jail's table of ids is a file in its run directory ([`path`]), replaced atomically and
//! only under the jail's lock, before any map holds one of its new ids: whoever applies a
//! policy (the launch, `claude-jail reload`, the launcher's own refresh) numbers it with the
//! table as saved, saves the new table, then writes the maps. The launcher, which reads the
//! events, describes an id from the table ([`RuleNames`]), not from its own copy of the policy
//! (which a reload by another process changes under it).
//!
//! The table keeps the descriptions of the policies in the maps now and of those they replaced
//! (events queued before the last update): not every description ever used, which a jail reloaded
//! for weeks would pile up. An event whose id has gone from it, older than two updates, is
//! described as such; it is never named after another rule.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{ErrorKind, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use jail_common::{RuleId, RULE_NONE};
use serde::{Deserialize, Serialize};

/// The table of jail's rule ids, in its run directory `run_dir`.
pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("rule-ids.json")
}

/// A jail's rule ids: see the module's documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleIds {
    /// The next id to hand out; ids below it are never handed out again.
    next: RuleId,
    /// The rules of the policies in the maps (the jail's and pasta's), by id.
    current: BTreeMap<RuleId, String>,
    /// The rules of the policies they replaced.
    previous: BTreeMap<RuleId, String>,
}

impl RuleIds {
    /// The table saved at `path`; empty when there is none yet (before a jail's first policy).
    pub fn load(path: &Path) -> Result<RuleIds> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a table of rule ids", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(RuleIds::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Replaces the table at `path` atomically (a reader sees the old table or the new one),
    /// root-only. The caller holds the jail's lock.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_vec(self)?;
        text.push(b'\n');
        // In the jail's run directory, which is root's alone (/run: no sync needed).
        let mut new = fs::OpenOptions::new();
        new.write(true).create(true).truncate(true).mode(0o600);
        new.open(&tmp)
            .and_then(|mut f| f.write_all(&text))
            .with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }

    /// The description of `id`, if the table still has it.
    pub fn describe(&self, id: RuleId) -> Option<&str> {
        self.current
            .get(&id)
            .or_else(|| self.previous.get(&id))
            .map(String::as_str)
    }

    /// Starts numbering the policies that replace those of this table: a rule described as one
    /// this table knows keeps its id, any other rule gets a new one.
    pub fn numbering(&self) -> Numbering {
        let known = self
            .previous
            .iter()
            .chain(&self.current)
            .map(|(&id, text)| (text.clone(), id))
            .collect();
        Numbering {
            known,
            table: RuleIds {
                next: self.next,
                current: BTreeMap::new(),
                previous: self.current.clone(),
            },
        }
    }
}

/// Hands out ids for the policies being built ([`RuleIds::numbering`]).
#[derive(Debug)]
pub struct Numbering {
    /// Description -> id, for every description the table had.
    known: HashMap<String, RuleId>,
    /// The table as it will be saved.
    table: RuleIds,
}

impl Numbering {
    /// Ids from scratch: for a policy that no jail's maps hold (`claude-jail policy`, the
    /// digest of a conf's own part), they are the rules' positions, a description that comes
    /// again taking the id it had.
    pub fn fresh() -> Numbering {
        RuleIds::default().numbering()
    }

    /// The id of the rule described by `description`.
    pub fn id(&mut self, description: String) -> Result<RuleId> {
        if let Some(&id) = self.known.get(&description) {
            self.table.current.insert(id, description);
            return Ok(id);
        }
        let id = self.table.next;
        if id == RULE_NONE {
            bail!(
                "this jail has handed out all {RULE_NONE} rule ids (every reload that changes a \
                 rule takes new ones). Nothing was changed. Fix: restart the jail"
            );
        }
        self.table.next += 1;
        self.known.insert(description.clone(), id);
        self.table.current.insert(id, description);
        Ok(id)
    }

    /// The table to save before the maps hold the ids handed out.
    pub fn finish(self) -> RuleIds {
        self.table
    }
}

/// The launcher's reader of the table, to describe the ids in refusal events: the table as last
/// read and the one read before it, read again (once per flush window) when an event carries an
/// id neither has. The events of a window were read from the ring buffer before it is flushed,
/// and the table that has their ids was saved before the maps held them: so the table read then
/// has them, unless two policy updates came in between.
pub struct RuleNames {
    path: PathBuf,
    latest: RuleIds,
    before: RuleIds,
    /// Whether the table was read in this window already.
    read_in_window: bool,
}

impl RuleNames {
    pub fn new(path: PathBuf) -> RuleNames {
        RuleNames {
            path,
            latest: RuleIds::default(),
            before: RuleIds::default(),
            read_in_window: false,
        }
    }

    /// A new flush window: the table may be read again.
    pub fn new_window(&mut self) {
        self.read_in_window = false;
    }

    /// "deny 10.0.0.0/8 (default)"; for an id no longer in the table (events older than two
    /// policy updates), what it is instead of a guess.
    pub fn describe(&mut self, id: RuleId) -> String {
        if id == RULE_NONE {
            return "no rule".into();
        }
        if let Some(d) = self.lookup(id) {
            return d;
        }
        if !self.read_in_window {
            self.read_in_window = true;
            if let Ok(t) = RuleIds::load(&self.path) {
                self.before = std::mem::replace(&mut self.latest, t);
            }
        }
        self.lookup(id).unwrap_or_else(|| {
            format!("rule {id} of a policy replaced since (its description is no longer kept)")
        })
    }

    fn lookup(&self, id: RuleId) -> Option<String> {
        self.latest
            .describe(id)
            .or_else(|| self.before.describe(id))
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(t: &RuleIds, rules: &[&str]) -> (Vec<RuleId>, RuleIds) {
        let mut n = t.numbering();
        let ids = rules.iter().map(|r| n.id(r.to_string()).unwrap()).collect();
        (ids, n.finish())
    }

    #[test]
    fn a_rule_keeps_its_id_and_a_changed_one_never_takes_an_old_one() {
        let (ids, t1) = number(
            &RuleIds::default(),
            &["deny a (conf c:1)", "deny b (default)"],
        );
        assert_eq!(ids, [0, 1], "from scratch, ids are positions");
        // Lines inserted above: the deny moved to line 3 is another rule.
        let (ids, t2) = number(
            &t1,
            &[
                "allow x (conf c:1)",
                "deny b (default)",
                "deny a (conf c:3)",
            ],
        );
        assert_eq!(ids, [2, 1, 3]);
        assert_eq!(
            t2.describe(0),
            Some("deny a (conf c:1)"),
            "kept for queued events"
        );
        assert_eq!(t2.describe(3), Some("deny a (conf c:3)"));
        // One more update: what only the first policy had is gone...
        let (ids, t3) = number(&t2, &["deny b (default)"]);
        assert_eq!(ids, [1]);
        assert_eq!(t3.describe(0), None);
        assert_eq!(t3.describe(2), Some("allow x (conf c:1)"), "the one before");
        // ... and when it comes back, it gets a new id: 0 is never handed out again.
        let (ids, t4) = number(&t3, &["deny a (conf c:1)"]);
        assert_eq!(ids, [4]);
        assert_eq!(t4.describe(4), Some("deny a (conf c:1)"));
        // The same description twice in one policy (the jail's and pasta's share rules) is one id.
        let (ids, _) = number(&t4, &["deny b (default)", "deny b (default)"]);
        assert_eq!(ids, [1, 1]);
    }

    #[test]
    fn ids_run_out_with_an_error_not_a_wrap() {
        let t = RuleIds {
            next: RULE_NONE - 1,
            ..RuleIds::default()
        };
        let mut n = t.numbering();
        assert_eq!(n.id("a".into()).unwrap(), RULE_NONE - 1);
        let e = n.id("b".into()).unwrap_err().to_string();
        assert!(e.contains("restart the jail"), "{e}");
        assert_eq!(
            n.id("a".into()).unwrap(),
            RULE_NONE - 1,
            "a known one still"
        );
    }

    #[test]
    fn the_launcher_reads_the_table_again_for_an_id_it_does_not_know() {
        let dir = std::env::temp_dir().join(format!("cj-rule-ids-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = path(&dir);
        let mut names = RuleNames::new(p.clone());
        assert_eq!(names.describe(RULE_NONE), "no rule");
        assert!(names
            .describe(0)
            .starts_with("rule 0 of a policy replaced since"));
        let (_, t1) = number(&RuleIds::default(), &["deny a (conf c:1)"]);
        t1.save(&p).unwrap();
        assert!(
            names.describe(0).starts_with("rule 0 of"),
            "read once per window"
        );
        names.new_window();
        assert_eq!(names.describe(0), "deny a (conf c:1)");
        let (_, t2) = number(&t1, &["deny a (conf c:3)"]);
        t2.save(&p).unwrap();
        let (_, t3) = number(&t2, &["deny a (conf c:5)"]);
        t3.save(&p).unwrap();
        // Two updates since the first table: its id is gone from the file, not from the reader.
        names.new_window();
        assert_eq!(names.describe(2), "deny a (conf c:5)");
        assert_eq!(names.describe(1), "deny a (conf c:3)");
        assert_eq!(names.describe(0), "deny a (conf c:1)");
        assert_eq!(RuleIds::load(&p).unwrap(), t3, "saved and read back");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            RuleIds::load(&p).unwrap(),
            RuleIds::default(),
            "no file yet"
        );
    }
}
