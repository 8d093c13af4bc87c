//! The config file of `sockserv serve --config FILE` and `sockserv check`:
//! TOML, the global defaults at the top, then one `[[listener]]` table per
//! listener, every key one of [`Settings`]' (a flag's name with `_` for
//! `-`), plus `name` and `address` in a table.
//!
//! Every mistake a user can make is reported as ONE line naming the file
//! and line, and which listener: `FILE:LINE: listener "api": unknown key
//! "handlr" (expected one of ...)`. toml gives each serde error the span of
//! the key or value at fault; the checks across keys (duplicate names and
//! addresses, handler with exec, a key in the wrong place) use the spans
//! kept with `name` and `address`, or find the key's line in its table.

use std::ops::Range;
use std::path::{Path, PathBuf};

use sockserv::Endpoint;

use super::settings::Settings;
use crate::error::{describe, CliError};

/// A config file, read and checked: the global settings and each
/// listener's (the global ones applied).
pub(crate) struct Config {
    pub(crate) path: PathBuf,
    /// The file's text: an error found later names the line of its key.
    text: String,
    pub(crate) global: Settings,
    pub(crate) listeners: Vec<Listener>,
}

/// One `[[listener]]` table.
pub(crate) struct Listener {
    /// Its keys over the global ones.
    pub(crate) settings: Settings,
    pub(crate) name: Option<String>,
    /// None for a listener that only a service manager's socket serves.
    pub(crate) address: Option<Endpoint>,
    /// The line of its `[[listener]]` header.
    line: usize,
    /// Its place in the file, from 1.
    number: usize,
}

/// Keys that only the top of the file may set.
const GLOBAL_ONLY: [&str; 3] = ["admin", "admin_public", "listener"];
/// Keys that only a `[[listener]]` table may set.
const LISTENER_ONLY: [&str; 2] = ["name", "address"];

/// Reads and checks the config file at `path`.
pub(crate) fn load(path: &Path) -> Result<Config, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "{}: cannot read it: {}",
            path.display(),
            describe(&e)
        ))
    })?;
    parse(path, &text)
}

impl Config {
    /// How messages name listener `l`: `listener "api"`, or `listener 2`
    /// for one without a name.
    pub(crate) fn label(&self, l: &Listener) -> String {
        match &l.name {
            Some(n) => format!("listener \"{n}\""),
            None => format!("listener {}", l.number),
        }
    }

    /// A usage error about listener `l`. The checks a config file shares
    /// with the command line speak of flags (`--max-frame 10: ...`): here
    /// they name the key instead, at the line that sets it (in the table,
    /// else at the top of the file), or at the table's header.
    pub(crate) fn error_at(&self, l: &Listener, message: impl std::fmt::Display) -> CliError {
        let mut message = message.to_string();
        let mut line = l.line;
        let flag = message.strip_prefix("--").map(|m| {
            m.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or_default()
                .to_string()
        });
        if let Some(flag) = flag.filter(|f| !f.is_empty()) {
            let key = flag.replace('-', "_");
            let src = Source::new(&self.path, &self.text);
            let table = l.number.checked_sub(1);
            if let Some(at) = src
                .key_line(table, &key)
                .or_else(|| src.key_line(None, &key))
            {
                line = at;
            }
            message = message.replace(&format!("--{flag}"), &key);
        }
        CliError::usage(format!(
            "{}:{line}: {}: {message}",
            self.path.display(),
            self.label(l)
        ))
    }

    /// Whether a SIGHUP has a rules file to reload.
    pub(crate) fn reloads(&self) -> bool {
        self.listeners.iter().any(|l| l.settings.rules.is_some())
    }
}

/// The file's text, with where each `[[listener]]` table begins.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offset and line of each `[[listener]]` header.
    headers: Vec<(usize, usize)>,
    /// Each table's name, as far as the file parses as TOML at all.
    names: Vec<Option<String>>,
}

impl<'a> Source<'a> {
    fn new(path: &'a Path, text: &'a str) -> Source<'a> {
        let mut headers = Vec::new();
        let mut offset = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let bare: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if bare.starts_with("[[listener]]") {
                headers.push((offset, i + 1));
            }
            offset += line.len();
        }
        let names = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("listener").and_then(|l| l.as_array()).cloned())
            .unwrap_or_default()
            .iter()
            .map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .collect();
        Source {
            path,
            text,
            headers,
            names,
        }
    }

    /// The line (from 1) of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Which listener table (from 0) holds `offset`, if any.
    fn table_at(&self, offset: usize) -> Option<usize> {
        self.headers.iter().rposition(|(start, _)| *start <= offset)
    }

    /// How messages name table `i`.
    fn label(&self, i: usize) -> String {
        match self.names.get(i).cloned().flatten() {
            Some(n) => format!("listener \"{n}\""),
            None => format!("listener {}", i + 1),
        }
    }

    /// The line of table `i`'s header.
    fn header_line(&self, i: usize) -> usize {
        self.headers.get(i).map_or(1, |(_, line)| *line)
    }

    /// The line where `key` is set: in listener table `table`, or at the
    /// top of the file.
    fn key_line(&self, table: Option<usize>, key: &str) -> Option<usize> {
        let (start, end) = match table {
            Some(i) => (
                self.headers.get(i)?.0,
                self.headers.get(i + 1).map_or(self.text.len(), |h| h.0),
            ),
            None => (0, self.headers.first().map_or(self.text.len(), |h| h.0)),
        };
        let mut offset = start;
        for line in self.text[start..end].split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(self.line_of(offset));
                }
            }
            offset += line.len();
        }
        None
    }

    /// One line: `FILE:LINE: [listener ...: ]MESSAGE`.
    fn error(
        &self,
        line: usize,
        table: Option<usize>,
        message: impl std::fmt::Display,
    ) -> CliError {
        let context = table.map_or(String::new(), |i| format!("{}: ", self.label(i)));
        CliError::usage(format!(
            "{}:{line}: {context}{message}",
            self.path.display()
        ))
    }

    /// A toml or serde error, in the words of a config file.
    fn toml_error(&self, e: &toml::de::Error) -> CliError {
        let span = e.span().unwrap_or(Range { start: 0, end: 0 });
        let table = self.table_at(span.start);
        let message = e.message().trim();
        let message = match unknown_field(message) {
            Some((key, expected)) => {
                let fits: Vec<&str> = expected
                    .into_iter()
                    .filter(|k| {
                        if table.is_some() {
                            !GLOBAL_ONLY.contains(k)
                        } else {
                            !LISTENER_ONLY.contains(k)
                        }
                    })
                    .collect();
                format!(
                    "unknown key \"{key}\" (expected one of {})",
                    fits.join(", ")
                )
            }
            None => match self.key_before(span.start) {
                Some(key) => format!("{key}: {message}"),
                None => message.to_string(),
            },
        };
        self.error(self.line_of(span.start), table, message)
    }

    /// The key of the `key = value` whose value begins at `offset`.
    fn key_before(&self, offset: usize) -> Option<String> {
        let start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let (key, _) = self.text.get(start..offset)?.split_once('=')?;
        let key = key.trim().trim_matches('"');
        (!key.is_empty()).then(|| key.to_string())
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`": the key and the
/// list.
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).collect();
    Some((key, expected))
}

/// Parses and checks a config file's text.
fn parse(path: &Path, text: &str) -> Result<Config, CliError> {
    let src = Source::new(path, text);
    let mut global: Settings = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let tables = std::mem::take(&mut global.listener);
    for key in LISTENER_ONLY {
        let span = match key {
            "name" => global.name.as_ref().map(|n| n.span()),
            _ => global.address.as_ref().map(|a| a.span()),
        };
        if let Some(span) = span {
            return Err(src.error(
                src.line_of(span.start),
                None,
                format!("{key} belongs in a [[listener]] table, not at the top of the file"),
            ));
        }
    }
    one_handler(&src, &global, None)?;
    if tables.is_empty() {
        return Err(CliError::usage(format!(
            "{}: no [[listener]] table: nothing to serve",
            path.display()
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    // A rules file is found from the config file's directory, at the top
    // of the file as in a table: a service manager's working directory is
    // not the one `sockserv check` ran in.
    if let Some(rules) = global.rules.take() {
        global.rules = Some(dir.join(rules));
    }
    let mut listeners: Vec<Listener> = Vec::new();
    for (i, mut table) in tables.into_iter().enumerate() {
        let line = src.header_line(i);
        for key in GLOBAL_ONLY {
            let set = match key {
                "admin" => table.admin.is_some(),
                "admin_public" => table.admin_public.is_some(),
                _ => !table.listener.is_empty(),
            };
            if set {
                return Err(src.error(
                    src.key_line(Some(i), key).unwrap_or(line),
                    Some(i),
                    format!(
                        "{key} is global: set it at the top of the file, once for all listeners"
                    ),
                ));
            }
        }
        one_handler(&src, &table, Some(i))?;
        // A rules file is found from the config file's directory.
        if let Some(rules) = table.rules.take() {
            table.rules = Some(dir.join(rules));
        }
        let name = table.name.as_ref().map(|n| n.get_ref().clone());
        if let (Some(n), Some(span)) = (&name, table.name.as_ref().map(|n| n.span())) {
            if n.is_empty() {
                return Err(src.error(src.line_of(span.start), Some(i), "name: an empty name"));
            }
            if let Some(first) = listeners.iter().find(|l| l.name.as_ref() == Some(n)) {
                return Err(src.error(
                    src.line_of(span.start),
                    Some(i),
                    format!(
                        "the name \"{n}\" is already the name of the listener at line {}",
                        first.line
                    ),
                ));
            }
        }
        let address = table.address.as_ref().map(|a| a.get_ref().0.clone());
        if let (Some(ep), Some(span)) = (&address, table.address.as_ref().map(|a| a.span())) {
            let fixed = ep.host_port().is_none_or(|hp| hp.port() != 0);
            if let Some(first) = listeners
                .iter()
                .find(|l| fixed && l.address.as_ref() == Some(ep))
            {
                return Err(src.error(
                    src.line_of(span.start),
                    Some(i),
                    format!(
                        "address {ep} is already the address of the listener at line {} \
                         (two listeners cannot share an address)",
                        first.line
                    ),
                ));
            }
        }
        if address.is_none() && name.is_none() {
            return Err(src.error(
                line,
                Some(i),
                "no address (and no name to match a socket passed by the service manager)",
            ));
        }
        let settings = table.over(&global);
        listeners.push(Listener {
            settings,
            name,
            address,
            line,
            number: i + 1,
        });
    }
    Ok(Config {
        path: path.to_path_buf(),
        text: text.to_string(),
        global,
        listeners,
    })
}

/// A table chooses a built-in handler or a program, not both.
fn one_handler(src: &Source<'_>, table: &Settings, at: Option<usize>) -> Result<(), CliError> {
    if table.handler.is_none() || table.exec.is_none() {
        return Ok(());
    }
    let line = src
        .key_line(at, "exec")
        .max(src.key_line(at, "handler"))
        .unwrap_or_else(|| at.map_or(1, |i| src.header_line(i)));
    Err(src.error(
        line,
        at,
        "both handler and exec: a listener runs a built-in handler or a program, not both",
    ))
}
