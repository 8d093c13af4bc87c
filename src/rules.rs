//! Access rules: which source addresses a server serves, by CIDR prefix.
//!
//! A [`Rules`] set holds `allow` and `deny` rules. For a peer the most
//! specific matching prefix wins (the longest; among rules of the same
//! prefix, the first given); with no matching rule, a set that has any
//! `allow` rule denies, and a set of `deny` rules only allows. An
//! IPv4-mapped IPv6 peer (`::ffff:10.1.2.3`, what a dual-stack listener
//! sees of an IPv4 client) is matched as the IPv4 address, and a rule for a
//! mapped prefix (`::ffff:10.0.0.0/104`) is the IPv4 rule (`10.0.0.0/8`).
//!
//! A refused peer is closed at once, before any handler and without a byte
//! sent, and counted as [`RefuseReason::Rule`](crate::stats::RefuseReason::Rule).
//! Datagrams from a refused source are dropped. Unix-socket peers have no
//! IP address: rules do not apply to them.
//!
//! A running server's rules are replaced with [`RulesHandle::set`] (from
//! [`Server::rules_handle`](crate::Server::rules_handle)) without dropping
//! a connection: the new set applies to the connections accepted after.
//!
//! The rules file format ([`Rules::parse`], [`Rules::load`]) is one rule a
//! line, `CIDR allow|deny [VAR=value ...]`; `#` starts a comment, blank
//! lines are skipped:
//!
//! ```
//! let rules = sockserv::Rules::parse(
//!     "# the office, but not its guest network
//!      10.0.0.0/8        allow  SITE=office
//!      10.99.0.0/16      deny
//!      2001:db8::/32     allow",
//! )
//! .unwrap();
//! assert!(rules.allows("10.1.2.3".parse().unwrap()));
//! assert!(!rules.allows("10.99.0.1".parse().unwrap()));
//! assert!(!rules.allows("192.0.2.1".parse().unwrap())); // any allow: default deny
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
pub use ipnet::IpNet;

use crate::burst::Burst;
use crate::rate::RateLimiter;

/// What a rule does with the peers it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// One rule: a prefix, what to do with it, and the `VAR=value` pairs given
/// with it. They change nothing in matching: an `allow` rule's pairs are
/// added to the environment of the program [`Exec`](crate::Exec) runs for
/// a client it admits (like tcprules' `VAR="x"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    net: IpNet,
    action: Action,
    env: Vec<(String, String)>,
}

impl Rule {
    /// A rule for `net` (its host bits cleared; an IPv4-mapped IPv6 prefix
    /// becomes the IPv4 one).
    pub fn new(net: IpNet, action: Action) -> Rule {
        Rule {
            net: canonical_net(net),
            action,
            env: Vec::new(),
        }
    }

    /// Adds a `VAR=value` pair.
    pub fn with_env(mut self, var: impl Into<String>, value: impl Into<String>) -> Rule {
        self.env.push((var.into(), value.into()));
        self
    }

    /// The prefix it matches.
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// Allow or deny.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The `VAR=value` pairs, in the order given.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }
}

/// A prefix with its host bits cleared, IPv4-mapped IPv6 as IPv4.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.addr().to_ipv4_mapped() {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n.trunc());
                }
            }
        }
    }
    net.trunc()
}

/// Parses `ADDR/LEN`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(s) {
        return Ok(net);
    }
    match IpAddr::from_str(s) {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(format!(
            "{s:?} is not a CIDR prefix (like 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)"
        )),
    }
}

/// A set of access rules; see the [module](self) documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Most specific first; among equal prefixes, in the order given.
    rules: Vec<Rule>,
    any_allow: bool,
}

impl Rules {
    /// No rules: every peer is allowed.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Adds an `allow` rule (and so makes the default deny).
    pub fn allow(mut self, net: IpNet) -> Rules {
        self.push(Rule::new(net, Action::Allow));
        self
    }

    /// Adds a `deny` rule.
    pub fn deny(mut self, net: IpNet) -> Rules {
        self.push(Rule::new(net, Action::Deny));
        self
    }

    /// Adds a rule.
    pub fn push(&mut self, rule: Rule) {
        let rule = Rule {
            net: canonical_net(rule.net),
            ..rule
        };
        self.any_allow |= rule.action == Action::Allow;
        // After every rule at least as specific: the list stays sorted
        // longest prefix first, and equal prefixes keep their order.
        let len = rule.net.prefix_len();
        let at = self
            .rules
            .iter()
            .position(|r| r.net.prefix_len() < len)
            .unwrap_or(self.rules.len());
        self.rules.insert(at, rule);
    }

    /// Adds every rule of `other` after this set's own.
    pub fn extend(&mut self, other: Rules) {
        for r in other.rules {
            self.push(r);
        }
    }

    /// Parses a rules file's text (see the [module](self) documentation).
    /// The error names the line; its `path` is unset.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let mut rules = Rules::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(cidr) = words.next() else {
                continue;
            };
            let err = |message: String| RulesError {
                path: None,
                line: i + 1,
                message,
            };
            let net = parse_cidr(cidr).map_err(err)?;
            let action = match words.next() {
                Some("allow") => Action::Allow,
                Some("deny") => Action::Deny,
                Some(w) => {
                    return Err(err(format!(
                        "{w:?} is not an action (allow or deny) after {cidr}"
                    )))
                }
                None => return Err(err(format!("no action (allow or deny) after {cidr}"))),
            };
            let mut rule = Rule::new(net, action);
            for pair in words {
                match pair.split_once('=') {
                    Some((var, value)) if valid_var(var) => {
                        rule = rule.with_env(var, value);
                    }
                    _ => {
                        return Err(err(format!(
                            "{pair:?} is not VAR=value (a name of letters, digits and _)"
                        )))
                    }
                }
            }
            rules.push(rule);
        }
        Ok(rules)
    }

    /// Reads and parses a rules file; the error names the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Rules, RulesError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            path: Some(path.to_path_buf()),
            line: 0,
            message: format!("cannot read it: {e}"),
        })?;
        Rules::parse(&text).map_err(|e| RulesError {
            path: Some(path.to_path_buf()),
            ..e
        })
    }

    /// The rule that decides for `ip`: the most specific one matching.
    pub fn matching(&self, ip: IpAddr) -> Option<&Rule> {
        let ip = ip.to_canonical();
        self.rules.iter().find(|r| r.net.contains(&ip))
    }

    /// Whether `ip` is served.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.admits(ip).is_some()
    }

    /// `Some` if `ip` is served: the `VAR=value` pairs of the rule that
    /// allows it (none when no rule matches).
    fn admits(&self, ip: IpAddr) -> Option<&[(String, String)]> {
        match self.matching(ip) {
            Some(r) => (r.action == Action::Allow).then_some(r.env.as_slice()),
            None => (!self.any_allow).then_some(&[]),
        }
    }

    /// The rules, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules (everyone is allowed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn valid_var(var: &str) -> bool {
    !var.is_empty()
        && !var.starts_with(|c: char| c.is_ascii_digit())
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A rules file that cannot be used: which file, which line, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    path: Option<PathBuf>,
    line: usize,
    message: String,
}

impl RulesError {
    /// The file, if it was read from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The line (from 1); 0 when the file could not be read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RulesError {}

/// Replaces a running server's access rules from any thread; see
/// [`Server::rules_handle`](crate::Server::rules_handle).
#[derive(Clone)]
pub struct RulesHandle {
    rules: Arc<ArcSwap<Rules>>,
}

impl fmt::Debug for RulesHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RulesHandle")
            .field("rules", &self.rules.load().len())
            .finish()
    }
}

impl RulesHandle {
    /// Puts `rules` in force for every connection accepted from now on;
    /// the open ones are not touched.
    pub fn set(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// The rules in force.
    pub fn get(&self) -> Arc<Rules> {
        self.rules.load_full()
    }
}

/// A server's access control: its rules and its per-source rate limit,
/// with the refusals each logs once per burst.
pub(crate) struct Access {
    rules: Arc<ArcSwap<Rules>>,
    rate: Option<RateLimiter>,
    rule_burst: Burst,
    rate_burst: Burst,
}

/// Why [`Access::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Rule,
    Rate,
}

impl Access {
    pub(crate) fn new(rules: Rules, rate: Option<crate::Rate>) -> Access {
        Access {
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            rate: rate.map(RateLimiter::new),
            rule_burst: Burst::default(),
            rate_burst: Burst::default(),
        }
    }

    pub(crate) fn handle(&self) -> RulesHandle {
        RulesHandle {
            rules: Arc::clone(&self.rules),
        }
    }

    /// Whether the rules serve `ip` (no rate limit counted: datagrams).
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        self.rules.load().allows(ip)
    }

    /// The rules, then the rate limit, for a new connection from `peer`;
    /// a refusal is logged once per burst. Ok: the `VAR=value` pairs of
    /// the rule that decided (for a program run per connection).
    pub(crate) fn check(&self, peer: &crate::Address) -> Result<Env, Refusal> {
        let Some(ip) = peer.ip() else {
            return Ok(Env::new());
        };
        let Some(env) = self.rules.load().admits(ip).map(<[_]>::to_vec) else {
            self.rule_burst.hit(|more| {
                tracing::info!(%peer, "refused by the access rules{}", also(more));
            });
            return Err(Refusal::Rule);
        };
        if let Some(rate) = &self.rate {
            if !rate.admit(ip.to_canonical(), std::time::Instant::now()) {
                self.rate_burst.hit(|more| {
                    tracing::info!(
                        %peer,
                        "refused: over {} connections from this address{}",
                        rate.rate(),
                        also(more)
                    );
                });
                return Err(Refusal::Rate);
            }
        }
        Ok(env)
    }
}

/// The `VAR=value` pairs a rule adds to a program's environment.
pub(crate) type Env = Vec<(String, String)>;

fn also(more: u64) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(" ({more} more refused since the last line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn no_rules_allow_everyone() {
        let r = Rules::new();
        assert!(r.allows(ip("192.0.2.1")));
        assert!(r.allows(ip("::1")));
        assert!(r.is_empty());
    }

    #[test]
    fn deny_only_allows_the_rest() {
        let r = Rules::new().deny(net("127.0.0.3/32"));
        assert!(!r.allows(ip("127.0.0.3")));
        assert!(r.allows(ip("127.0.0.2")));
        assert!(r.allows(ip("::1")));
    }

    #[test]
    fn any_allow_makes_the_default_deny() {
        let r = Rules::new()
            .allow(net("127.0.0.2/32"))
            .deny(net("10.0.0.0/8"));
        assert!(r.allows(ip("127.0.0.2")));
        assert!(!r.allows(ip("127.0.0.3")));
        assert!(!r.allows(ip("10.1.1.1")));
        assert!(!r.allows(ip("::1")));
    }

    #[test]
    fn the_most_specific_prefix_wins_whatever_the_order() {
        let r = Rules::new()
            .allow(net("127.0.0.0/8"))
            .deny(net("127.0.0.4/30"))
            .allow(net("127.0.0.5/32"));
        assert!(r.allows(ip("127.0.0.5")));
        assert!(!r.allows(ip("127.0.0.4")));
        assert!(!r.allows(ip("127.0.0.7")));
        assert!(r.allows(ip("127.0.0.2")));
        assert!(r.allows(ip("127.0.0.8")));
        let reversed = Rules::new()
            .allow(net("127.0.0.5/32"))
            .deny(net("127.0.0.4/30"))
            .allow(net("127.0.0.0/8"));
        for a in ["127.0.0.5", "127.0.0.4", "127.0.0.7", "127.0.0.2"] {
            assert_eq!(r.allows(ip(a)), reversed.allows(ip(a)), "{a}");
        }
        assert_eq!(
            r.matching(ip("127.0.0.6")).unwrap().net(),
            net("127.0.0.4/30")
        );
    }

    #[test]
    fn equal_prefixes_the_first_given_wins() {
        let r = Rules::new()
            .deny(net("10.0.0.0/8"))
            .allow(net("10.0.0.0/8"));
        assert!(!r.allows(ip("10.0.0.1")));
    }

    #[test]
    fn host_bits_are_cleared() {
        let r = Rules::new().deny(net("127.0.0.6/30"));
        assert_eq!(r.iter().next().unwrap().net(), net("127.0.0.4/30"));
        assert!(!r.allows(ip("127.0.0.4")));
    }

    #[test]
    fn ipv6_rules() {
        let r = Rules::new()
            .deny(net("::1/128"))
            .allow(net("2001:db8::/32"));
        assert!(!r.allows(ip("::1")));
        assert!(r.allows(ip("2001:db8:1::7")));
        assert!(!r.allows(ip("2001:db9::1")));
        // IPv4 rules never match IPv6 peers, nor the reverse.
        let v4 = Rules::new().allow(net("0.0.0.0/0"));
        assert!(!v4.allows(ip("::2")));
        let v6 = Rules::new().allow(net("::/0"));
        assert!(!v6.allows(ip("192.0.2.1")));
    }

    #[test]
    fn mapped_peers_match_as_ipv4() {
        let r = Rules::new().deny(net("127.0.0.3/32"));
        assert!(!r.allows(ip("::ffff:127.0.0.3")));
        assert!(r.allows(ip("::ffff:127.0.0.2")));
        let a = Rules::new().allow(net("10.0.0.0/8"));
        assert!(a.allows(ip("::ffff:10.9.8.7")));
        // A mapped prefix is the IPv4 one.
        let m = Rules::new().deny(net("::ffff:10.0.0.0/104"));
        assert_eq!(m.iter().next().unwrap().net(), net("10.0.0.0/8"));
        assert!(!m.allows(ip("10.1.2.3")));
        assert!(!m.allows(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn bare_addresses_are_hosts() {
        assert_eq!(net("192.0.2.7"), net("192.0.2.7/32"));
        assert_eq!(net("::1"), net("::1/128"));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }

    #[test]
    fn files_parse_with_comments_blanks_and_vars() {
        let r = Rules::parse(
            "# header\n\n  10.0.0.0/8 allow SITE=office  TIER=2 # trailing\n\
             10.99.0.0/16 deny\n\t::1 deny\n",
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        let office = r.matching(ip("10.1.1.1")).unwrap();
        assert_eq!(office.action(), Action::Allow);
        assert_eq!(
            office.env(),
            &[
                ("SITE".to_string(), "office".to_string()),
                ("TIER".to_string(), "2".to_string())
            ]
        );
        assert!(!r.allows(ip("10.99.1.1")));
        assert!(!r.allows(ip("::1")));
        assert!(r.matching(ip("10.99.1.1")).unwrap().env().is_empty());
        assert!(Rules::parse("").unwrap().is_empty());
        assert!(Rules::parse("# only\n\n").unwrap().is_empty());
    }

    #[test]
    fn file_errors_name_the_line_and_the_problem() {
        let e = Rules::parse("10.0.0.0/8 allow\n\n10.1.0.0/33 deny\n").unwrap_err();
        assert_eq!(e.line(), 3);
        assert!(e.message().contains("10.1.0.0/33"), "{e}");
        assert_eq!(e.to_string(), format!("line 3: {}", e.message()));
        let e = Rules::parse("10.0.0.0/8 permit").unwrap_err();
        assert_eq!(e.line(), 1);
        assert!(e.message().contains("permit"), "{e}");
        let e = Rules::parse("# x\n10.0.0.0/8").unwrap_err();
        assert_eq!(e.line(), 2);
        assert!(e.message().contains("no action"), "{e}");
        let e = Rules::parse("10.0.0.0/8 allow SITE").unwrap_err();
        assert!(e.message().contains("VAR=value"), "{e}");
        let e = Rules::parse("10.0.0.0/8 allow 1X=y").unwrap_err();
        assert!(e.message().contains("VAR=value"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("sockserv-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules");
        std::fs::write(&path, "127.0.0.1 allow\nnonsense deny\n").unwrap();
        let e = Rules::load(&path).unwrap_err();
        assert_eq!(e.path(), Some(path.as_path()));
        assert_eq!(e.line(), 2);
        assert!(e
            .to_string()
            .starts_with(&format!("{}: line 2: ", path.display())));
        let missing = Rules::load(dir.join("missing")).unwrap_err();
        assert_eq!(missing.line(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_handle_replaces_the_rules() {
        let access = Access::new(Rules::new().deny(net("127.0.0.3/32")), None);
        let peer: crate::Address = crate::Address::Inet("127.0.0.3:5000".parse().unwrap());
        assert_eq!(access.check(&peer), Err(Refusal::Rule));
        access.handle().set(Rules::new());
        assert_eq!(access.check(&peer), Ok(Vec::new()));
        assert!(access.handle().get().is_empty());
        // The deciding rule's variables come with the verdict.
        let mut lab = Rules::new().deny(net("127.0.0.4/32"));
        lab.push(Rule::new(net("127.0.0.0/8"), Action::Allow).with_env("SITE", "lab"));
        access.handle().set(lab);
        assert_eq!(
            access.check(&peer),
            Ok(vec![("SITE".to_string(), "lab".to_string())])
        );
        // Unix peers have no IP: rules do not apply.
        let deny_all = Access::new(Rules::new().allow(net("10.0.0.0/8")), None);
        assert_eq!(deny_all.check(&crate::Address::Unix(None)), Ok(Vec::new()));
    }
}
