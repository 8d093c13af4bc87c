//! [`Framing`]: the user's choice of framing, and its text form.
//!
//! A `Framing` is configuration: immutable, cheap to clone, shared by every
//! connection of a server. [`Framing::codec`] makes the per-connection
//! [`Codec`] with fresh decoding state.
//!
//! # Text syntax (the CLI's `--framing`)
//!
//! | text | meaning |
//! | --- | --- |
//! | `raw` | each read is one message (no framing) |
//! | `line` | split on `\n`; the `\n` is removed |
//! | `crlf` | split on `\n`, also removing one `\r` before it; writes `\r\n` |
//! | `delim:D1\|D2\|...` | split on any of the delimiters (the one giving the shortest frame wins); writes `D1` |
//! | `len:N[:le\|:be][:offset=K][:adjust=A][:strip=S]` | `N`-byte length prefix, N ∈ 1, 2, 3, 4, 8; big-endian unless `:le` |
//! | `fixed:N` | frames of exactly `N` bytes |
//!
//! Delimiters are separated by `|`, and support the escapes `\n`, `\r`,
//! `\t`, `\0`, `\\`, `\|` (a literal `|`) and `\xHH` (any byte, two hex
//! digits); every other byte stands for itself. So `delim:\r\n|\n` is
//! Netty's line delimiters and `delim:\0` is NUL-terminated messages.
//! The `len` options are the [`LengthField`] parameters (`adjust` is
//! `length_adjustment`, Netty's meaning). Keywords are case-insensitive.
//!
//! [`Display`](fmt::Display) prints the same syntax back, so
//! `s.parse::<Framing>()?.to_string()` round-trips (in a canonical form:
//! lower case, `:be` and zero options omitted). The maximum frame size and
//! the oversize policy are not part of the text; the CLI has separate
//! options for them.

use std::fmt;
use std::str::FromStr;

use super::FramingError;

use super::{
    Codec, DelimiterCodec, Endian, FixedCodec, LengthCodec, LengthField, LineCodec, OnOversize,
    RawCodec, DEFAULT_MAX_FRAME,
};

/// The accepted forms, quoted in every parse error.
const EXPECTED: &str =
    "expected raw, line, crlf, delim:STRING, len:N[:le|:be][:offset=K][:adjust=A][:strip=S] or fixed:N";

/// Which codec, with its codec-specific parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Raw,
    Line,
    Crlf,
    /// A validated prototype whose searchers every connection shares.
    Delimiter(DelimiterCodec),
    /// The configuration as given (for `Display`) and the validated
    /// prototype codec built from it, both with the framing's `max_frame`.
    Length(LengthField, LengthCodec),
    Fixed(FixedCodec),
}

/// How a server splits its byte streams into messages: codec choice, the
/// maximum frame size and what to do with frames over it.
///
/// Everything is validated when the value is built, so [`Framing::codec`]
/// cannot fail on the accept path.
///
/// ```
/// use sockserv::frame::{Framing, OnOversize};
/// let f: Framing = "delim:\\r\\n|\\n".parse().unwrap();
/// let f = f.with_max_frame(1024).unwrap().with_on_oversize(OnOversize::Skip);
/// assert_eq!(f.to_string(), "delim:\\r\\n|\\n");
/// assert_eq!(f.max_frame(), 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    kind: Kind,
    max_frame: usize,
    on_oversize: OnOversize,
}

impl Framing {
    /// The accepted text forms, for CLI help and error messages.
    pub const SYNTAX: &'static str =
        "raw | line | crlf | delim:STRING | len:N[:le|:be][:offset=K][:adjust=A][:strip=S] | fixed:N";

    fn new(kind: Kind) -> Self {
        Framing {
            kind,
            max_frame: DEFAULT_MAX_FRAME,
            on_oversize: OnOversize::default(),
        }
    }

    /// No framing: each read is one message (see [`RawCodec`]).
    pub fn raw() -> Self {
        Framing::new(Kind::Raw)
    }

    /// `\n`-terminated lines (see [`LineCodec`]).
    pub fn line() -> Self {
        Framing::new(Kind::Line)
    }

    /// Lines ending in `\r\n` (a bare `\n` is accepted too; see
    /// [`LineCodec`]).
    pub fn crlf() -> Self {
        Framing::new(Kind::Crlf)
    }

    /// Messages ended by any of `delimiters`; the first is written by the
    /// encoder. Fails on an empty list, an empty delimiter, or a delimiter
    /// that occurs inside another other than at its end (see
    /// [`DelimiterCodec`]).
    pub fn delimiter(delimiters: Vec<Vec<u8>>) -> Result<Self, FramingError> {
        let proto = DelimiterCodec::new(delimiters, DEFAULT_MAX_FRAME)?;
        Ok(Framing::new(Kind::Delimiter(proto)))
    }

    /// Length-prefixed messages. The field's `max_frame` becomes the
    /// framing's; fails when the field configuration is invalid
    /// ([`LengthField::validate`]).
    pub fn length(field: LengthField) -> Result<Self, FramingError> {
        let proto = field.build()?;
        let mut f = Framing::new(Kind::Length(field, proto));
        f.max_frame = field.max_frame;
        Ok(f)
    }

    /// Messages of exactly `size` bytes. Fails when `size` is 0. If `size`
    /// is over the default maximum frame size, the maximum is raised to
    /// `size`, so that `fixed:100000` works without also asking for a larger
    /// limit; [`with_max_frame`](Self::with_max_frame) below `size`
    /// fails. The CLI does the same: without `--max-frame` the limit of
    /// `fixed:N` is N when N is larger than 64 KiB, and a `--max-frame`
    /// below N is refused.
    pub fn fixed(size: usize) -> Result<Self, FramingError> {
        let proto = FixedCodec::new(size, size)?;
        let mut f = Framing::new(Kind::Fixed(proto));
        f.max_frame = size.max(DEFAULT_MAX_FRAME);
        Ok(f)
    }

    /// Sets the maximum frame size (for `len`, of the whole frame, header
    /// included; for the others, of the message without its delimiter).
    /// Fails when it is below [`min_max_frame`](Self::min_max_frame) (0, or
    /// smaller than a `fixed` size or a length header): such a limit would
    /// reject every frame, which is a configuration mistake worth reporting.
    pub fn with_max_frame(mut self, max_frame: usize) -> Result<Self, FramingError> {
        self.set_max_frame(max_frame)?;
        Ok(self)
    }

    /// The smallest maximum frame size this framing accepts.
    pub fn min_max_frame(&self) -> usize {
        match &self.kind {
            Kind::Raw | Kind::Line | Kind::Crlf | Kind::Delimiter(_) => 1,
            Kind::Length(field, _) => field.header_len(),
            Kind::Fixed(proto) => proto.size(),
        }
    }

    /// Changes the limit everywhere it is kept; on error nothing changes.
    fn set_max_frame(&mut self, max_frame: usize) -> Result<(), FramingError> {
        if max_frame == 0 {
            return Err(FramingError::from(
                "the maximum frame size must be at least 1 byte".to_string(),
            ));
        }
        match &mut self.kind {
            Kind::Raw | Kind::Line | Kind::Crlf => {}
            Kind::Delimiter(proto) => proto.set_max_frame(max_frame),
            Kind::Length(field, proto) => {
                let changed = field.max_frame(max_frame);
                *proto = changed.build()?;
                *field = changed;
            }
            Kind::Fixed(proto) => {
                *proto = FixedCodec::new(proto.size(), max_frame)?;
            }
        }
        self.max_frame = max_frame;
        Ok(())
    }

    /// Sets what the driver does with a frame over the limit.
    pub fn with_on_oversize(mut self, on_oversize: OnOversize) -> Self {
        self.on_oversize = on_oversize;
        self
    }

    /// The maximum frame size.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// What the driver does with a frame over the limit.
    pub fn on_oversize(&self) -> OnOversize {
        self.on_oversize
    }

    /// Whether this is the `raw` framing, where a driver may skip decoding
    /// altogether and hand each read straight to the handler.
    pub fn is_raw(&self) -> bool {
        matches!(self.kind, Kind::Raw)
    }

    /// The framing's keyword (`raw`, `line`, `crlf`, `delim`, `len` or
    /// `fixed`), for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Raw => "raw",
            Kind::Line => "line",
            Kind::Crlf => "crlf",
            Kind::Delimiter(_) => "delim",
            Kind::Length(..) => "len",
            Kind::Fixed(_) => "fixed",
        }
    }

    /// A codec with fresh state, for one connection. Infallible: the
    /// configuration was checked when the `Framing` was built.
    pub fn codec(&self) -> Codec {
        match &self.kind {
            Kind::Raw => Codec::Raw(RawCodec::new(self.max_frame)),
            Kind::Line => Codec::Line(LineCodec::new(self.max_frame, false)),
            Kind::Crlf => Codec::Line(LineCodec::new(self.max_frame, true)),
            Kind::Delimiter(proto) => Codec::Delimiter(proto.fresh()),
            // The prototypes have never decoded anything: their state is
            // fresh.
            Kind::Length(_, proto) => Codec::Length(proto.clone()),
            Kind::Fixed(proto) => Codec::Fixed(*proto),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Raw => f.write_str("raw"),
            Kind::Line => f.write_str("line"),
            Kind::Crlf => f.write_str("crlf"),
            Kind::Delimiter(proto) => {
                f.write_str("delim:")?;
                for (i, d) in proto.delimiters().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    f.write_str(&escape(d))?;
                }
                Ok(())
            }
            Kind::Length(field, _) => {
                write!(f, "len:{}", field.length_field_len)?;
                if field.endian == Endian::Little {
                    f.write_str(":le")?;
                }
                if field.length_field_offset != 0 {
                    write!(f, ":offset={}", field.length_field_offset)?;
                }
                if field.length_adjustment != 0 {
                    write!(f, ":adjust={}", field.length_adjustment)?;
                }
                if let Some(strip) = field.strip {
                    write!(f, ":strip={strip}")?;
                }
                Ok(())
            }
            Kind::Fixed(proto) => write!(f, "fixed:{}", proto.size()),
        }
    }
}

impl FromStr for Framing {
    type Err = FramingError;

    /// Parses the syntax in the [module docs](self). Errors are one line,
    /// quoting the input and the accepted forms.
    fn from_str(s: &str) -> Result<Self, FramingError> {
        parse(s).map_err(FramingError)
    }
}

/// The parser behind `Framing::from_str`, with the messages as text.
fn parse(s: &str) -> Result<Framing, String> {
    {
        let (keyword, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let keyword = keyword.to_ascii_lowercase();
        let invalid = |why: String| format!("invalid framing \"{s}\": {why}");
        match (keyword.as_str(), arg) {
            ("raw", None) => Ok(Framing::raw()),
            ("line", None) => Ok(Framing::line()),
            ("crlf", None) => Ok(Framing::crlf()),
            ("raw" | "line" | "crlf", Some(_)) => {
                Err(invalid(format!("\"{keyword}\" takes no parameters")))
            }
            ("delim", Some(arg)) if !arg.is_empty() => {
                let delims = unescape_delimiters(arg).map_err(invalid)?;
                Framing::delimiter(delims).map_err(|e| invalid(e.0))
            }
            ("delim", _) => Err(invalid(
                "delim needs at least one delimiter, as in delim:\\r\\n or delim:\\0".to_string(),
            )),
            ("len", Some(arg)) => parse_length(arg).map_err(invalid),
            ("len", None) => Err(invalid(
                "len needs the length field size, as in len:4 (1, 2, 3, 4 or 8 bytes)".to_string(),
            )),
            ("fixed", Some(arg)) => {
                let n = parse_num::<usize>(arg, "fixed frame size").map_err(invalid)?;
                Framing::fixed(n).map_err(|e| invalid(e.0))
            }
            ("fixed", None) => Err(invalid(
                "fixed needs the frame size in bytes, as in fixed:64".to_string(),
            )),
            _ => Err(format!("unknown framing \"{s}\": {EXPECTED}")),
        }
    }
}

fn parse_num<T: FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse::<T>()
        .map_err(|_| format!("{what} \"{text}\" is not a valid number"))
}

/// `N[:le|:be][:offset=K][:adjust=A][:strip=S]`
fn parse_length(arg: &str) -> Result<Framing, String> {
    let mut parts = arg.split(':');
    let n = parse_num::<usize>(parts.next().unwrap_or_default(), "length field size")?;
    let mut field = LengthField::new(n);
    for part in parts {
        let lower = part.to_ascii_lowercase();
        match lower.split_once('=') {
            None if lower == "le" => field = field.endian(Endian::Little),
            None if lower == "be" => field = field.endian(Endian::Big),
            Some(("offset", v)) => {
                field = field.length_field_offset(parse_num(v, "length field offset")?)
            }
            Some(("adjust", v)) => {
                field = field.length_adjustment(parse_num(v, "length adjustment")?)
            }
            Some(("strip", v)) => field = field.strip(parse_num(v, "strip")?),
            _ => {
                return Err(format!(
                    "unknown len option \"{part}\": expected le, be, offset=K, adjust=A or strip=S"
                ))
            }
        }
    }
    Framing::length(field).map_err(|e| e.0)
}

/// Splits on unescaped `|` and decodes the escapes of the module docs.
fn unescape_delimiters(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'|' => out.push(std::mem::take(&mut cur)),
            b'\\' => {
                let e = bytes.next().ok_or_else(|| {
                    "a delimiter ends with a lone \\ (write \\\\ for a backslash)".to_string()
                })?;
                let byte = match e {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'0' => 0,
                    b'\\' => b'\\',
                    b'|' => b'|',
                    b'x' => {
                        let hi = bytes.next().and_then(hex_val);
                        let lo = bytes.next().and_then(hex_val);
                        match (hi, lo) {
                            (Some(hi), Some(lo)) => hi << 4 | lo,
                            _ => return Err("\\x must be followed by two hex digits".to_string()),
                        }
                    }
                    other => {
                        return Err(format!(
                            "unknown escape \"\\{}\" in a delimiter: use \\n \\r \\t \\0 \\\\ \\| or \\xHH",
                            char::from(other).escape_default()
                        ))
                    }
                };
                cur.push(byte);
            }
            _ => cur.push(b),
        }
    }
    out.push(cur);
    if out.iter().any(Vec::is_empty) {
        return Err("empty delimiter (two | in a row, or one at either end)".to_string());
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The delimiter syntax for `bytes`: what [`FromStr`] reads back as the same
/// bytes. Also used to quote delimiters in error messages.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0 => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            b'|' => s.push_str("\\|"),
            b' '..=b'~' => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Framing {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("raw"), Framing::raw());
        assert_eq!(parse("LINE"), Framing::line());
        assert_eq!(parse("crlf"), Framing::crlf());
        assert_eq!(
            parse("delim:\\r\\n|\\n"),
            Framing::delimiter(vec![b"\r\n".to_vec(), b"\n".to_vec()]).unwrap()
        );
        assert_eq!(
            parse("delim:\\0|\\x7c\\|a:b"),
            Framing::delimiter(vec![b"\0".to_vec(), b"||a:b".to_vec()]).unwrap()
        );
        assert_eq!(
            parse("len:4"),
            Framing::length(LengthField::new(4)).unwrap()
        );
        assert_eq!(
            parse("len:2:be"),
            Framing::length(LengthField::new(2)).unwrap()
        );
        assert_eq!(
            parse("len:8:LE:offset=2:adjust=-10:strip=0"),
            Framing::length(
                LengthField::new(8)
                    .endian(Endian::Little)
                    .length_field_offset(2)
                    .length_adjustment(-10)
                    .strip(0)
            )
            .unwrap()
        );
        assert_eq!(parse("fixed:64"), Framing::fixed(64).unwrap());
        assert_eq!(parse("fixed:100000").max_frame(), 100_000);
    }

    #[test]
    fn round_trips() {
        for s in [
            "raw",
            "line",
            "crlf",
            "delim:\\r\\n|\\n",
            "delim:\\0",
            "delim:--boundary\\xff\\x01|\\|\\\\",
            "len:1",
            "len:3:le",
            "len:4:offset=1:adjust=-3:strip=3",
            "len:8:le:adjust=7",
            "fixed:1",
        ] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
        assert_eq!(parse("len:4:be").to_string(), "len:4");
    }

    #[test]
    fn errors_are_one_line_and_helpful() {
        let cases = [
            ("foo", "unknown framing \"foo\": expected raw"),
            ("", "unknown framing"),
            ("line:x", "takes no parameters"),
            ("delim:", "at least one delimiter"),
            ("delim", "at least one delimiter"),
            ("delim:a||b", "empty delimiter"),
            ("delim:\\q", "unknown escape \"\\q\""),
            ("delim:\\x4", "two hex digits"),
            ("delim:ab\\", "lone \\"),
            ("delim:\\r|\\r\\n", "occurs inside delimiter"),
            ("len", "len needs"),
            ("len:5", "1, 2, 3, 4 or 8"),
            ("len:x", "not a valid number"),
            ("len:4:middle", "unknown len option"),
            ("len:2:strip=3", "strip of 3 bytes exceeds"),
            ("fixed:0", "at least 1 byte"),
            ("fixed:-1", "not a valid number"),
        ];
        for (input, want) in cases {
            let err = input.parse::<Framing>().unwrap_err();
            assert!(err.to_string().contains(want), "{input}: {err}");
            assert!(!err.to_string().contains('\n'), "{input}: {err}");
        }
    }

    #[test]
    fn max_frame_and_policy() {
        let f = Framing::line();
        assert_eq!(f.max_frame(), DEFAULT_MAX_FRAME);
        assert_eq!(f.on_oversize(), OnOversize::Close);
        assert!(f.clone().with_max_frame(0).is_err());
        let f = f
            .with_max_frame(10)
            .unwrap()
            .with_on_oversize(OnOversize::Skip);
        assert_eq!(f.on_oversize(), OnOversize::Skip);
        match f.codec() {
            Codec::Line(c) => assert_eq!(c.max_frame(), 10),
            other => panic!("{other:?}"),
        }
        assert!(Framing::fixed(8).unwrap().with_max_frame(7).is_err());
        assert_eq!(Framing::fixed(8).unwrap().min_max_frame(), 8);
        assert!(Framing::length(LengthField::new(4).length_field_offset(4))
            .unwrap()
            .with_max_frame(7)
            .is_err());
        let f = Framing::length(LengthField::new(4))
            .unwrap()
            .with_max_frame(100)
            .unwrap();
        match f.codec() {
            Codec::Length(c) => assert_eq!(c.max_frame(), 100),
            other => panic!("{other:?}"),
        }
        let f = parse("delim:\\n").with_max_frame(5).unwrap();
        match f.codec() {
            Codec::Delimiter(c) => assert_eq!(c.max_frame(), 5),
            other => panic!("{other:?}"),
        }
        assert!(parse("raw").is_raw());
        assert_eq!(parse("len:2").name(), "len");
    }
}
