//! Chart version constraints (`spec.chart.version` of a `Pack`) and picking the highest match from a
//! repository index.
//!
//! Chart versions are SemVer 2; the index may spell them with a leading `v` (`v1.2.3`) and, like Helm's
//! Masterminds parser, we also accept partial versions there (`1.2` = `1.2.0`). Constraint forms:
//!
//! | Form | Meaning |
//! |---|---|
//! | empty, `*`, `x`, `X` | any stable version (the highest wins) |
//! | `4.15.2`, `v4.15.2`, `=4.15.2` | exactly that version (build metadata ignored) |
//! | `~=X.Y.Z` (PEP 440) | `>=X.Y.Z <X.(Y+1).0` — `~=0.6.14` is `>=0.6.14 <0.7.0` |
//! | `~=X.Y` (PEP 440) | `>=X.Y.0 <(X+1).0.0` — `~=0.1` is `>=0.1.0 <1.0.0`; `~=X` alone is invalid |
//! | `^1.2.3`, `^0.2.3`, `^0.0.3` | `>=1.2.3 <2.0.0`, `>=0.2.3 <0.3.0`, `>=0.0.3 <0.0.4` (first non-zero part is fixed) |
//! | `^1.2`, `^0.0`, `^0` | `>=1.2.0 <2.0.0`, `>=0.0.0 <0.1.0`, `>=0.0.0 <1.0.0` |
//! | `~1.2.3`, `~>1.2.3`, `~1.2`, `~1` | `>=1.2.3 <1.3.0`, same, `>=1.2.0 <1.3.0`, `>=1.0.0 <2.0.0` |
//! | `1.2.x`, `1.x`, `=1.2` | `>=1.2.0 <1.3.0`, `>=1.0.0 <2.0.0`, `>=1.2.0 <1.3.0` |
//! | `>`, `>=`/`=>`, `<`, `<=`/`=<`, `!=` | comparisons (partial versions: see below) |
//! | `A - B` (spaces required) | `>=A <=B` — `1.2 - 1.4.5` is `>=1.2.0 <=1.4.5` |
//! | `a, b` or `a b` | both must hold (AND) |
//! | `a \|\| b` | either may hold (OR); AND binds tighter |
//!
//! Semantics follow Masterminds semver v3 (what Helm and Flux use), plus PEP 440's `~=`, which Masterminds
//! rejects. Decisions where the spelling alone is not enough:
//!
//! * **Partial versions in comparisons** stand for the whole range they name, as in Masterminds and npm:
//!   `>1.2` is `>=1.3.0` (greater than every 1.2.x), `<=1.2` is `<1.3.0`, `>=1.2` is `>=1.2.0`, `<1.2` is
//!   `<1.2.0`, `!=1.2` excludes every 1.2.x. Wildcards behave like missing parts (`1.2.x` = `1.2`). A bare
//!   wildcard matches everything with `=`, `>=`, `<=`, `~` and `^`, and nothing with `>`, `<` and `!=`.
//!   A part after a wildcard must be a wildcard too (`1.x.3` is rejected rather than guessed).
//! * **Pre-releases** match only when the constraint asks for them: an AND group (the part between `||`)
//!   in which any version is written with a pre-release (`>=1.0.0-0`, `1.0.0-rc.1`, `^2.0.0-beta`) admits
//!   pre-releases for the whole group, ordered by SemVer precedence (Masterminds v3). Otherwise
//!   `1.0.0-rc.1` never matches, even if it lies in the range. Upper bounds that come from a range
//!   (`^`, `~`, `~=`, `x`, `<=1.2`) compare only major.minor.patch, so `^1.2` never admits `2.0.0-rc.1`.
//! * **Build metadata** (`+build`) is ignored for matching, as SemVer says. Two index entries that differ
//!   only in build metadata (or in a leading `v`) are ordered deterministically: by build metadata, then by
//!   the string as written.
//! * `~0.0.0` means `>=0.0.0 <0.1.0` (the tilde rule), not Masterminds' special-cased "anything".
//! * Leading zeros in numbers (`01.2.3`) are rejected, as SemVer says.
//!
//! Parsing is pure and never panics; every error names the offending input and shows a valid form.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use semver::{BuildMetadata, Prerelease, Version};

/// Why a version constraint (or a version string) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// A version inside a constraint is malformed (`1.2.3.4`, `1.a`, `01.2`, `1.x.3`, ...).
    #[error(
        "version constraint `{constraint}`: `{token}` is not a valid version: {detail}; \
         valid versions look like `1.2.3`, `v1.2.3`, `1.2`, `1.2.x` or `1.0.0-rc.1`"
    )]
    InvalidVersion {
        constraint: String,
        token: String,
        detail: String,
    },
    /// A PEP 440 compatible-release clause (`~=`) with the wrong number of parts or a wildcard.
    #[error(
        "version constraint `{constraint}`: `{token}` is not a valid compatible release: {detail}; \
         `~=` takes major.minor or major.minor.patch, e.g. `~=1.4` (>=1.4.0 <2.0.0) or `~=1.4.2` (>=1.4.2 <1.5.0)"
    )]
    InvalidCompatibleRelease {
        constraint: String,
        token: String,
        detail: String,
    },
    /// The constraint's structure is wrong: a stray comma, an empty `||` alternative, an operator
    /// without a version, a half hyphen range, ...
    #[error(
        "version constraint `{constraint}`: {detail}; valid constraints look like `1.2.3`, `~=0.6`, `^1.2`, \
         `>=1.0.0, <2.0.0`, `1.2 - 1.4.5` or `^1.0 || ^2.0`"
    )]
    InvalidSyntax { constraint: String, detail: String },
    /// A single version (not a constraint) could not be parsed.
    #[error(
        "`{input}` is not a valid version: {detail}; valid versions look like `1.2.3`, `v1.2.3` or `1.0.0-rc.1`"
    )]
    InvalidChartVersion { input: String, detail: String },
}

impl VersionError {
    /// The reason used in status conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        "InvalidVersionConstraint"
    }
}

/// A parsed chart version constraint; see the module documentation for the syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionConstraint {
    original: String,
    /// OR of AND groups; never empty (an empty constraint is one group without bounds).
    alternatives: Vec<Alternative>,
}

impl VersionConstraint {
    /// Parses a constraint. Leading and trailing whitespace is ignored; an empty constraint matches the
    /// highest stable version.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let syntax = |detail: String| VersionError::InvalidSyntax {
            constraint: s.to_string(),
            detail,
        };
        let alternatives = if s.trim().is_empty() {
            vec![Alternative {
                bounds: Vec::new(),
                allows_prerelease: false,
            }]
        } else {
            s.split("||")
                .map(|group| {
                    if group.trim().is_empty() {
                        Err(syntax("an alternative next to `||` is empty".to_string()))
                    } else {
                        parse_alternative(s, group)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Self {
            original: s.to_string(),
            alternatives,
        })
    }

    /// Whether `v` satisfies the constraint (pre-releases only when the constraint asks for them).
    pub fn matches(&self, v: &Version) -> bool {
        self.alternatives.iter().any(|a| a.matches(v))
    }

    /// The constraint exactly as it was given to [`VersionConstraint::parse`].
    pub fn original(&self) -> &str {
        &self.original
    }
}

impl fmt::Display for VersionConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl FromStr for VersionConstraint {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Parses a version as a repository index spells it: SemVer 2, optionally with a leading `v`, and
/// leniently padded when parts are missing (`1.2` = `1.2.0`, as Helm does).
pub fn parse_version(s: &str) -> Result<Version, VersionError> {
    PartialVersion::parse(s.trim(), false)
        .map(|p| p.floor())
        .map_err(|detail| VersionError::InvalidChartVersion {
            input: s.to_string(),
            detail,
        })
}

/// The highest version in `versions` (strings as they appear in a repository index) that matches
/// `constraint`, returned as the original string. Unparsable versions are skipped.
pub fn highest_match<'a, I>(constraint: &VersionConstraint, versions: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    fn as_str<'x>(s: &'x &str) -> &'x str {
        s
    }
    highest_match_by(constraint, versions, as_str)
}

/// Like [`highest_match`], for any item that carries a version string (an index entry, say); returns
/// the item whose version is the highest match. Ties in precedence are broken by build metadata, then by
/// the version string, so the answer never depends on the order of `items`.
pub fn highest_match_by<T, F>(
    constraint: &VersionConstraint,
    items: impl IntoIterator<Item = T>,
    version_of: F,
) -> Option<T>
where
    F: Fn(&T) -> &str,
{
    let mut best: Option<(Version, T)> = None;
    for item in items {
        let Ok(version) = parse_version(version_of(&item)) else {
            continue;
        };
        if !constraint.matches(&version) {
            continue;
        }
        let better = match &best {
            None => true,
            // `Version`'s `Ord` is precedence first, then build metadata.
            Some((best_version, best_item)) => match version.cmp(best_version) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => version_of(&item) > version_of(best_item),
            },
        };
        if better {
            best = Some((version, item));
        }
    }
    best.map(|(_, item)| item)
}

/// major.minor.patch without pre-release, for range bounds that ignore pre-release tags.
type Release = (u64, u64, u64);

/// One AND group of a constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alternative {
    bounds: Vec<Bound>,
    allows_prerelease: bool,
}

impl Alternative {
    fn matches(&self, v: &Version) -> bool {
        (v.pre.is_empty() || self.allows_prerelease) && self.bounds.iter().all(|b| b.admits(v))
    }
}

/// A single condition on a version. Version bounds compare by SemVer precedence (pre-releases sort before
/// their release, build metadata ignored); release bounds compare major.minor.patch only.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bound {
    AtLeast(Version),
    Above(Version),
    AtMost(Version),
    Below(Version),
    Exactly(Version),
    NotExactly(Version),
    ReleaseAtLeast(Release),
    ReleaseBelow(Release),
    /// Outside `[lo, hi)`; `hi = None` means no upper end.
    OutsideReleases(Release, Option<Release>),
    Nothing,
}

impl Bound {
    fn admits(&self, v: &Version) -> bool {
        let release = (v.major, v.minor, v.patch);
        match self {
            Bound::AtLeast(b) => v.cmp_precedence(b) != Ordering::Less,
            Bound::Above(b) => v.cmp_precedence(b) == Ordering::Greater,
            Bound::AtMost(b) => v.cmp_precedence(b) != Ordering::Greater,
            Bound::Below(b) => v.cmp_precedence(b) == Ordering::Less,
            Bound::Exactly(b) => v.cmp_precedence(b) == Ordering::Equal,
            Bound::NotExactly(b) => v.cmp_precedence(b) != Ordering::Equal,
            Bound::ReleaseAtLeast(r) => release >= *r,
            Bound::ReleaseBelow(r) => release < *r,
            Bound::OutsideReleases(lo, hi) => release < *lo || hi.is_some_and(|hi| release >= hi),
            Bound::Nothing => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Tilde,
    Caret,
    Compatible,
}

/// Longest spellings first so `~=` is not read as `~` followed by `=`.
const OPERATORS: [(&str, Op); 12] = [
    ("~=", Op::Compatible),
    ("~>", Op::Tilde),
    (">=", Op::Ge),
    ("=>", Op::Ge),
    ("<=", Op::Le),
    ("=<", Op::Le),
    ("!=", Op::Ne),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("=", Op::Eq),
    ("~", Op::Tilde),
    ("^", Op::Caret),
];

fn split_operator(word: &str) -> (Option<(&'static str, Op)>, &str) {
    for (spelling, op) in OPERATORS {
        if let Some(rest) = word.strip_prefix(spelling) {
            return (Some((spelling, op)), rest);
        }
    }
    (None, word)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Comma,
}

fn tokenize(group: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, c) in group.char_indices() {
        if c.is_whitespace() || c == ',' {
            if let Some(s) = start.take() {
                tokens.push(Token::Word(&group[s..i]));
            }
            if c == ',' {
                tokens.push(Token::Comma);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        tokens.push(Token::Word(&group[s..]));
    }
    tokens
}

/// One `||` alternative: its tokens into comparisons. Long because it is one state machine over the token
/// stream (operator, version, hyphen range, wildcard); split up it would read worse.
fn parse_alternative(constraint: &str, group: &str) -> Result<Alternative, VersionError> {
    let syntax = |detail: String| VersionError::InvalidSyntax {
        constraint: constraint.to_string(),
        detail,
    };
    let tokens = tokenize(group);
    let mut bounds = Vec::new();
    let mut allows_prerelease = false;
    let mut after_comma = false;
    let mut terms = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let word = match tokens[i] {
            Token::Comma => {
                if terms == 0 || after_comma {
                    return Err(syntax(
                        "a comma must separate two comparisons (found a stray `,`)".to_string(),
                    ));
                }
                after_comma = true;
                i += 1;
                continue;
            }
            Token::Word(w) => w,
        };
        after_comma = false;
        terms += 1;
        i += 1;
        if word == "-" {
            return Err(syntax(
                "a hyphen range needs a version on both sides, e.g. `1.2 - 1.4.5`".to_string(),
            ));
        }
        let (operator, rest) = split_operator(word);
        let (op, spelling, version_text) = match operator {
            Some((spelling, op)) if rest.is_empty() => match tokens.get(i) {
                Some(Token::Word(next)) if *next != "-" && split_operator(next).0.is_none() => {
                    i += 1;
                    (op, spelling, *next)
                }
                _ => {
                    return Err(syntax(format!(
                        "operator `{spelling}` is not followed by a version"
                    )));
                }
            },
            Some((spelling, op)) => (op, spelling, rest),
            None => (Op::Eq, "", rest),
        };
        let token = format!("{spelling}{version_text}");
        let version = parse_term_version(constraint, op, &token, version_text)?;
        allows_prerelease |= !version.pre.is_empty();

        // `A - B` is only valid between two versions without operators.
        if operator.is_none() && tokens.get(i) == Some(&Token::Word("-")) {
            let upper_text = match tokens.get(i + 1) {
                Some(Token::Word(next)) if split_operator(next).0.is_none() && *next != "-" => {
                    *next
                }
                _ => {
                    return Err(syntax(format!(
                        "the hyphen range starting at `{version_text}` needs a version after `-`, e.g. `1.2 - 1.4.5`"
                    )));
                }
            };
            i += 2;
            let upper = parse_term_version(constraint, Op::Le, upper_text, upper_text)?;
            allows_prerelease |= !upper.pre.is_empty();
            bounds.extend(bounds_for(Op::Ge, &version));
            bounds.extend(bounds_for(Op::Le, &upper));
        } else {
            bounds.extend(bounds_for(op, &version));
        }
    }
    if after_comma {
        return Err(syntax(
            "a comma must separate two comparisons (found a trailing `,`)".to_string(),
        ));
    }
    Ok(Alternative {
        bounds,
        allows_prerelease,
    })
}

fn parse_term_version(
    constraint: &str,
    op: Op,
    token: &str,
    text: &str,
) -> Result<PartialVersion, VersionError> {
    let version = PartialVersion::parse(text, true).map_err(|detail| {
        if op == Op::Compatible {
            VersionError::InvalidCompatibleRelease {
                constraint: constraint.to_string(),
                token: token.to_string(),
                detail,
            }
        } else {
            VersionError::InvalidVersion {
                constraint: constraint.to_string(),
                token: token.to_string(),
                detail,
            }
        }
    })?;
    if op == Op::Compatible {
        let detail = if version.has_wildcard {
            Some("wildcards are not allowed with `~=`".to_string())
        } else if version.specified() < 2 {
            Some("a single number is not allowed (PEP 440 forbids `~=1`)".to_string())
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(VersionError::InvalidCompatibleRelease {
                constraint: constraint.to_string(),
                token: token.to_string(),
                detail,
            });
        }
    }
    Ok(version)
}

/// The bounds one `op version` term stands for.
fn bounds_for(op: Op, v: &PartialVersion) -> Vec<Bound> {
    let specified = v.specified();
    let floor = v.floor();
    // `*` without a pre-release has no lower end; `*-rc` still starts at `0.0.0-rc`.
    let lower = if specified == 0 && v.pre.is_empty() {
        None
    } else {
        Some(Bound::AtLeast(floor.clone()))
    };
    let with_upper = |upper: Option<Release>| -> Vec<Bound> {
        lower
            .iter()
            .cloned()
            .chain(upper.map(Bound::ReleaseBelow))
            .collect()
    };
    match op {
        Op::Eq if specified == 3 => vec![Bound::Exactly(floor)],
        Op::Eq => with_upper(v.range_end()),
        Op::Ne if specified == 3 => vec![Bound::NotExactly(floor)],
        Op::Ne if specified == 0 => vec![Bound::Nothing],
        Op::Ne => vec![Bound::OutsideReleases(v.release_floor(), v.range_end())],
        Op::Gt if specified == 3 => vec![Bound::Above(floor)],
        // `>*` and `>MAX.MAX`: nothing is above.
        Op::Gt => match v.range_end() {
            Some(end) => vec![Bound::ReleaseAtLeast(end)],
            None => vec![Bound::Nothing],
        },
        Op::Ge => lower.into_iter().collect(),
        Op::Lt if specified == 0 => vec![Bound::Nothing],
        Op::Lt => vec![Bound::Below(floor)],
        Op::Le if specified == 3 => vec![Bound::AtMost(floor)],
        Op::Le => v.range_end().map(Bound::ReleaseBelow).into_iter().collect(),
        Op::Tilde => with_upper(v.tilde_end()),
        Op::Caret => with_upper(v.caret_end()),
        Op::Compatible => with_upper(v.compatible_end()),
    }
}

/// A version as written in a constraint: missing or wildcard parts are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartialVersion {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    has_wildcard: bool,
    pre: Prerelease,
    build: BuildMetadata,
}

impl PartialVersion {
    /// Parses `v?N(.N(.N)?)?(-pre)?(+build)?`, where `N` may be `x`, `X` or `*` if `wildcards`.
    /// The error is a detail sentence for the caller to wrap.
    fn parse(text: &str, wildcards: bool) -> Result<Self, String> {
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '*')))
        {
            return Err(format!(
                "`{c}` cannot appear in a version (put a space or a comma between comparisons, \
                 `||` between alternatives)"
            ));
        }
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        if core.is_empty() {
            return Err("it has no version number".to_string());
        }
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 {
            return Err(format!(
                "`{core}` has {} numbers; chart versions have at most three (major.minor.patch)",
                parts.len()
            ));
        }
        let mut numbers = [None; 3];
        let mut has_wildcard = false;
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if matches!(*part, "x" | "X" | "*") {
                if !wildcards {
                    return Err(format!("wildcard `{part}` is only allowed in constraints"));
                }
                has_wildcard = true;
                continue;
            }
            if has_wildcard {
                return Err(format!(
                    "`{part}` follows a wildcard; only wildcards may follow one (write `1.x`, not `1.x.3`)"
                ));
            }
            *slot = Some(parse_number(part)?);
        }
        let pre = match pre {
            None => Prerelease::EMPTY,
            Some("") => return Err("the pre-release after `-` is empty".to_string()),
            Some(pre) => {
                Prerelease::new(pre).map_err(|e| format!("pre-release `{pre}` is invalid: {e}"))?
            }
        };
        let build = match build {
            None => BuildMetadata::EMPTY,
            Some("") => return Err("the build metadata after `+` is empty".to_string()),
            Some(build) => BuildMetadata::new(build)
                .map_err(|e| format!("build metadata `{build}` is invalid: {e}"))?,
        };
        Ok(Self {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            has_wildcard,
            pre,
            build,
        })
    }

    /// How many leading parts are concrete numbers (0 for `*`, 2 for `1.2` or `1.2.x`).
    fn specified(&self) -> usize {
        match (self.major, self.minor, self.patch) {
            (None, _, _) => 0,
            (Some(_), None, _) => 1,
            (Some(_), Some(_), None) => 2,
            (Some(_), Some(_), Some(_)) => 3,
        }
    }

    fn release_floor(&self) -> Release {
        (
            self.major.unwrap_or(0),
            self.minor.unwrap_or(0),
            self.patch.unwrap_or(0),
        )
    }

    /// The lowest version the partial names, keeping its pre-release and build metadata.
    fn floor(&self) -> Version {
        let (major, minor, patch) = self.release_floor();
        Version {
            major,
            minor,
            patch,
            pre: self.pre.clone(),
            build: self.build.clone(),
        }
    }

    /// First release above everything `1`, `1.2` (or `1.2.3`) names. `None` only for `*`.
    fn range_end(&self) -> Option<Release> {
        match (self.major, self.minor, self.patch) {
            (None, _, _) => None,
            (Some(major), None, _) => bump_major(major),
            (Some(major), Some(minor), None) => bump_minor(major, minor),
            (Some(major), Some(minor), Some(patch)) => bump_patch(major, minor, patch),
        }
    }

    /// `~1` → `<2.0.0`; `~1.2`, `~1.2.3` → `<1.3.0`.
    fn tilde_end(&self) -> Option<Release> {
        match (self.major, self.minor) {
            (None, _) => None,
            (Some(major), None) => bump_major(major),
            (Some(major), Some(minor)) => bump_minor(major, minor),
        }
    }

    /// Caret fixes the first non-zero part written; if all written parts are zero, the last one.
    fn caret_end(&self) -> Option<Release> {
        match (self.major, self.minor, self.patch) {
            (None, _, _) => None,
            (Some(major), _, _) if major > 0 => bump_major(major),
            (Some(major), None, _) => bump_major(major),
            (Some(major), Some(minor), _) if minor > 0 => bump_minor(major, minor),
            (Some(major), Some(minor), None) => bump_minor(major, minor),
            (Some(major), Some(minor), Some(patch)) => bump_patch(major, minor, patch),
        }
    }

    /// PEP 440 `~=`: drop the last written part and bump the one before it.
    fn compatible_end(&self) -> Option<Release> {
        match (self.major, self.minor, self.patch) {
            (Some(major), Some(minor), Some(_)) => bump_minor(major, minor),
            (Some(major), Some(_), None) => bump_major(major),
            // Rejected at parse time; no upper end keeps this total.
            _ => None,
        }
    }
}

// Exclusive upper ends. When a part is already `u64::MAX` the bump carries into the part before it, which
// excludes exactly the same versions (no release lies between `0.0.MAX` and `0.1.0`); `None` means
// nothing is above, so there is no upper end.
fn bump_major(major: u64) -> Option<Release> {
    major.checked_add(1).map(|m| (m, 0, 0))
}

fn bump_minor(major: u64, minor: u64) -> Option<Release> {
    match minor.checked_add(1) {
        Some(m) => Some((major, m, 0)),
        None => bump_major(major),
    }
}

fn bump_patch(major: u64, minor: u64, patch: u64) -> Option<Release> {
    match patch.checked_add(1) {
        Some(p) => Some((major, minor, p)),
        None => bump_minor(major, minor),
    }
}

fn parse_number(part: &str) -> Result<u64, String> {
    if part.is_empty() {
        return Err("it has an empty number (two dots in a row, or a trailing dot)".to_string());
    }
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{part}` is not a number"));
    }
    if part.len() > 1 && part.starts_with('0') {
        return Err(format!("`{part}` has a leading zero"));
    }
    part.parse::<u64>()
        .map_err(|_| format!("`{part}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        parse_version(s).unwrap()
    }

    fn c(s: &str) -> VersionConstraint {
        VersionConstraint::parse(s).unwrap_or_else(|e| panic!("`{s}` should parse: {e}"))
    }

    /// (constraint, versions that match, versions that do not).
    const MATCH_TABLE: &[(&str, &[&str], &[&str])] = &[
        // Empty and wildcards: any stable.
        ("", &["0.0.0", "1.2.3", "99.0.0"], &["1.0.0-rc.1"]),
        ("  ", &["1.2.3"], &["1.0.0-rc.1"]),
        ("*", &["0.0.0", "1.2.3"], &["1.0.0-rc.1"]),
        ("x", &["1.2.3"], &["1.0.0-alpha"]),
        (">=*", &["1.2.3"], &[]),
        ("^*", &["1.2.3", "0.0.1"], &[]),
        ("~*", &["1.2.3"], &[]),
        (">*", &[], &["0.0.0", "1.2.3"]),
        ("<*", &[], &["0.0.0", "1.2.3"]),
        ("!=*", &[], &["1.2.3"]),
        // Exact pins.
        (
            "4.15.2",
            &["4.15.2", "v4.15.2", "4.15.2+build.7"],
            &["4.15.3", "4.15.1", "4.15.2-rc.1"],
        ),
        ("v4.15.2", &["4.15.2"], &["4.15.3"]),
        ("=4.15.2", &["4.15.2"], &["4.15.3"]),
        ("= 4.15.2", &["4.15.2"], &["4.15.3"]),
        (
            "1.0.0-rc.1",
            &["1.0.0-rc.1"],
            &["1.0.0", "1.0.0-rc.2", "0.9.0"],
        ),
        ("1.2.3+meta", &["1.2.3", "1.2.3+other"], &["1.2.4"]),
        // PEP 440 compatible release.
        (
            "~=0.6.14",
            &["0.6.14", "0.6.20"],
            &["0.6.13", "0.7.0", "0.6.15-rc.1"],
        ),
        (
            "~=0.1",
            &["0.1.0", "0.1.3", "0.2.0", "0.99.99"],
            &["0.0.9", "1.0.0", "1.0.0-rc.1"],
        ),
        ("~= 0.1", &["0.5.0"], &["1.0.0"]),
        ("~=4.15", &["4.15.0", "4.99.0"], &["4.14.9", "5.0.0"]),
        ("~=1.2.0", &["1.2.0", "1.2.9"], &["1.3.0"]),
        ("~=v1.2", &["1.9.0"], &["2.0.0"]),
        (
            "~=1.2.3-rc.1",
            &["1.2.3-rc.1", "1.2.3-rc.2", "1.2.3", "1.2.9"],
            &["1.2.3-beta", "1.3.0"],
        ),
        // Caret.
        (
            "^1.2.3",
            &["1.2.3", "1.9.9"],
            &["1.2.2", "2.0.0", "2.0.0-rc.1"],
        ),
        ("^0.2.3", &["0.2.3", "0.2.9"], &["0.2.2", "0.3.0", "1.0.0"]),
        ("^0.0.3", &["0.0.3"], &["0.0.4", "0.0.2", "0.1.0"]),
        (
            "^1.2",
            &["1.2.0", "1.9.9"],
            &["1.1.9", "2.0.0", "2.0.0-rc.1", "1.5.0-rc.1"],
        ),
        ("^1", &["1.0.0", "1.99.0"], &["2.0.0", "0.9.0"]),
        ("^0", &["0.0.0", "0.99.9"], &["1.0.0"]),
        ("^0.0", &["0.0.0", "0.0.9"], &["0.1.0"]),
        ("^0.2", &["0.2.0", "0.2.9"], &["0.3.0"]),
        ("^0.0.0", &["0.0.0"], &["0.0.1"]),
        ("^1.x", &["1.0.0", "1.9.0"], &["2.0.0"]),
        ("^ 1.2", &["1.5.0"], &["2.0.0"]),
        // Tilde.
        ("~1.2.3", &["1.2.3", "1.2.99"], &["1.2.2", "1.3.0"]),
        ("~>1.2.3", &["1.2.3", "1.2.99"], &["1.3.0"]),
        ("~1.2", &["1.2.0", "1.2.9"], &["1.3.0", "1.1.0"]),
        ("~1", &["1.0.0", "1.9.9"], &["2.0.0", "0.9.0"]),
        ("~0", &["0.0.0", "0.9.9"], &["1.0.0"]),
        ("~0.0.0", &["0.0.0", "0.0.9"], &["0.1.0"]),
        ("~> 0.1", &["0.1.5"], &["0.2.0"]),
        // Comparisons with full versions.
        (
            ">1.2.3",
            &["1.2.4", "2.0.0"],
            &["1.2.3", "1.2.3+b", "1.0.0"],
        ),
        (
            ">=1.2.3",
            &["1.2.3", "1.2.3+b", "2.0.0"],
            &["1.2.2", "1.2.4-rc.1"],
        ),
        ("=>1.2.3", &["1.2.3"], &["1.2.2"]),
        ("<1.2.3", &["1.2.2", "0.0.1"], &["1.2.3", "1.2.3-rc.1"]),
        ("<=1.2.3", &["1.2.3", "1.0.0"], &["1.2.4"]),
        ("=<1.2.3", &["1.2.3"], &["1.2.4"]),
        ("!=1.2.3", &["1.2.4", "1.2.2"], &["1.2.3", "1.2.3+b"]),
        // Comparisons with partial versions: the partial names a range.
        (">1.2", &["1.3.0", "2.0.0"], &["1.2.0", "1.2.99"]),
        (">1", &["2.0.0"], &["1.99.0"]),
        (">=1.2", &["1.2.0", "1.3.0"], &["1.1.99"]),
        ("<1.2", &["1.1.99"], &["1.2.0"]),
        ("<=1.2", &["1.2.0", "1.2.99", "0.1.0"], &["1.3.0"]),
        ("<=1", &["1.99.0"], &["2.0.0"]),
        ("!=1.2", &["1.1.0", "1.3.0", "2.2.0"], &["1.2.0", "1.2.7"]),
        ("!=1.x", &["0.9.0", "2.0.0"], &["1.0.0", "1.5.0"]),
        ("=1.2", &["1.2.0", "1.2.5"], &["1.3.0"]),
        // Wildcards.
        (
            "1.2.x",
            &["1.2.0", "1.2.9"],
            &["1.3.0", "1.1.0", "1.2.5-rc.1"],
        ),
        ("1.2.X", &["1.2.0"], &["1.3.0"]),
        ("1.2.*", &["1.2.0"], &["1.3.0"]),
        ("1.x", &["1.0.0", "1.9.0"], &["2.0.0"]),
        ("1.x.x", &["1.0.0", "1.9.0"], &["2.0.0"]),
        ("1.2", &["1.2.0", "1.2.3"], &["1.3.0"]),
        ("1", &["1.0.0", "1.9.0"], &["2.0.0"]),
        (">=1.x", &["1.0.0"], &["0.9.0"]),
        // AND.
        (
            ">=1, <2",
            &["1.0.0", "1.9.9"],
            &["0.9.9", "2.0.0", "1.5.0-rc.1"],
        ),
        (">=1,<2", &["1.5.0"], &["2.0.0"]),
        (">= 1.2 < 1.5", &["1.2.0", "1.4.9"], &["1.5.0", "1.1.0"]),
        (">=1.2.0 <1.5.0 !=1.3.0", &["1.2.0", "1.4.0"], &["1.3.0"]),
        (" >= 1.2 ,  < 1.5 ", &["1.4.0"], &["1.5.0"]),
        ("~=0.1, !=0.5.0", &["0.4.0", "0.6.0"], &["0.5.0"]),
        // OR.
        ("^1.0 || ^3.0", &["1.5.0", "3.1.0"], &["2.0.0", "4.0.0"]),
        ("1.2.3||1.2.5", &["1.2.3", "1.2.5"], &["1.2.4"]),
        ("<1.0.0 || >=2.0.0", &["0.9.0", "2.0.0"], &["1.0.0"]),
        // Hyphen ranges.
        (
            "1.2 - 1.4.5",
            &["1.2.0", "1.4.5", "1.3.0"],
            &["1.1.9", "1.4.6"],
        ),
        ("1.2.3 - 2.3", &["1.2.3", "2.3.9"], &["2.4.0", "1.2.2"]),
        ("1.2.3 - 2.3.4, !=2.0.0", &["1.5.0"], &["2.0.0"]),
        ("v1.2.3 - v1.2.5", &["1.2.4"], &["1.2.6"]),
        // Pre-releases only when named; per AND group.
        (
            ">=1.0.0-0",
            &["1.0.0-rc.1", "1.0.0", "2.0.0-alpha", "1.0.0-0"],
            &["0.9.0"],
        ),
        (
            ">=1.0.0-0, <2.0.0",
            &["1.5.0-rc.1", "1.0.0-0"],
            &["2.0.0", "0.9.0-rc.1"],
        ),
        (
            "^2.0.0-beta",
            &["2.0.0-beta", "2.0.0-rc.1", "2.0.0", "2.5.0-alpha"],
            &["2.0.0-alpha", "3.0.0-rc.1"],
        ),
        (
            "1.0.0-rc.1 || ^2",
            &["1.0.0-rc.1", "2.5.0"],
            &["2.5.0-rc.1"],
        ),
        (
            "~1.2.3-alpha",
            &["1.2.3-alpha", "1.2.3-beta", "1.2.3", "1.2.9-rc.1"],
            &["1.2.2", "1.3.0-rc.1"],
        ),
        (
            "<1.2.0-rc.2",
            &["1.2.0-rc.1", "1.1.0"],
            &["1.2.0-rc.2", "1.2.0"],
        ),
        // Leading `v` in the constraint and the versions.
        ("v1.2.x", &["v1.2.3", "1.2.3"], &["v1.3.0"]),
        ("^v1.2", &["v1.5.0"], &["v2.0.0"]),
        ("V1.2.3", &["1.2.3"], &[]),
        // Build metadata is ignored.
        (
            "^1.2.3+build",
            &["1.2.3", "1.2.3+b", "1.5.0+x"],
            &["1.2.2+b"],
        ),
    ];

    #[test]
    fn match_table() {
        for (constraint, good, bad) in MATCH_TABLE {
            let parsed = c(constraint);
            for version in *good {
                assert!(
                    parsed.matches(&v(version)),
                    "`{constraint}` should match `{version}`"
                );
            }
            for version in *bad {
                assert!(
                    !parsed.matches(&v(version)),
                    "`{constraint}` should not match `{version}`"
                );
            }
        }
    }

    /// (constraint, versions in index order, expected highest match).
    const HIGHEST_TABLE: &[(&str, &[&str], Option<&str>)] = &[
        (
            "~=0.1",
            &["0.1.0", "0.1.3", "0.2.0", "1.0.0"],
            Some("0.2.0"),
        ),
        (
            "~=0.6.14",
            &["0.6.13", "0.6.14", "0.6.20", "0.7.0"],
            Some("0.6.20"),
        ),
        (
            "^1.2",
            &["1.2.0", "1.9.9", "2.0.0-rc.1", "2.0.0"],
            Some("1.9.9"),
        ),
        ("", &["1.0.0", "2.0.0-rc.1", "1.5.0"], Some("1.5.0")),
        ("*", &["v1.0.0", "v1.10.0", "v1.9.0"], Some("v1.10.0")),
        (">=1.0.0-0", &["1.0.0", "1.1.0-rc.1"], Some("1.1.0-rc.1")),
        (
            "1.0.0-rc.1",
            &["1.0.0", "1.0.0-rc.1", "1.0.0-rc.2"],
            Some("1.0.0-rc.1"),
        ),
        ("4.15.2", &["4.15.1", "v4.15.2", "4.15.3"], Some("v4.15.2")),
        ("^2", &["1.0.0", "1.9.0"], None),
        ("^1", &[], None),
        // Unparsable index entries are skipped.
        ("*", &["latest", "1.0.0", "", "2.0", "3.0.0.0"], Some("2.0")),
        (
            "^1 || ^3",
            &["1.4.0", "2.0.0", "3.1.0", "4.0.0"],
            Some("3.1.0"),
        ),
        // Ties in precedence are broken by build metadata, then string, whatever the order.
        ("1.2.3", &["1.2.3+b", "1.2.3+a"], Some("1.2.3+b")),
        ("1.2.3", &["1.2.3+a", "1.2.3+b"], Some("1.2.3+b")),
        ("1.2.3", &["v1.2.3", "1.2.3"], Some("v1.2.3")),
        ("1.2.3", &["1.2.3", "v1.2.3"], Some("v1.2.3")),
    ];

    #[test]
    fn highest_table() {
        for (constraint, versions, expected) in HIGHEST_TABLE {
            let got = highest_match(&c(constraint), versions.iter().copied());
            assert_eq!(
                got, *expected,
                "highest match of `{constraint}` in {versions:?}"
            );
        }
    }

    #[test]
    fn highest_match_by_returns_the_item() {
        struct Entry {
            version: &'static str,
            digest: &'static str,
        }
        let entries = [
            Entry {
                version: "0.1.0",
                digest: "a",
            },
            Entry {
                version: "0.2.0",
                digest: "b",
            },
            Entry {
                version: "1.0.0",
                digest: "c",
            },
        ];
        let best = highest_match_by(&c("~=0.1"), &entries, |e| e.version).unwrap();
        assert_eq!(best.digest, "b");
    }

    #[test]
    fn invalid_constraints() {
        // (constraint, expected variant, a fragment the message must contain)
        type Check = fn(&VersionError) -> bool;
        let syntax: Check = |e| matches!(e, VersionError::InvalidSyntax { .. });
        let version: Check = |e| matches!(e, VersionError::InvalidVersion { .. });
        let compatible: Check = |e| matches!(e, VersionError::InvalidCompatibleRelease { .. });
        let table: &[(&str, Check, &str)] = &[
            ("~=1", compatible, "PEP 440 forbids `~=1`"),
            ("~= 1", compatible, "`~=1`"),
            ("~=1.2.3.4", compatible, "at most three"),
            ("~=1.x", compatible, "wildcards"),
            ("~=*", compatible, "wildcards"),
            ("~=", syntax, "operator `~=` is not followed by a version"),
            (">=", syntax, "operator `>=` is not followed by a version"),
            (">= , 1.2", syntax, "not followed by a version"),
            (">= >= 1.2", syntax, "not followed by a version"),
            ("1.2.3.4", version, "at most three"),
            ("1.a", version, "`a` is not a number"),
            ("01.2.3", version, "leading zero"),
            ("1..2", version, "empty number"),
            ("1.2.", version, "empty number"),
            ("1.x.3", version, "follows a wildcard"),
            ("1.2.3-", version, "pre-release after `-` is empty"),
            ("1.2.3+", version, "build metadata after `+` is empty"),
            ("1.2.3-rc.01", version, "pre-release `rc.01` is invalid"),
            ("1.2.3-rc..1", version, "pre-release"),
            ("99999999999999999999999", version, "too large"),
            ("latest", version, "`latest`"),
            ("v", version, "no version number"),
            (
                ">=1.2<1.5",
                version,
                "`<` cannot appear in a version (put a space or a comma",
            ),
            ("=~1.2", version, "`~` cannot appear"),
            ("~~1.2", version, "`~` cannot appear"),
            ("^1 ||", syntax, "empty"),
            ("|| ^1", syntax, "empty"),
            ("^1 |||| ^2", syntax, "empty"),
            ("^1 | ^2", version, "`|` cannot appear"),
            ("1.2.3 && 1.2.4", version, "`&` cannot appear"),
            (",1.2", syntax, "stray"),
            ("1.2,,1.3", syntax, "stray"),
            ("1.2,", syntax, "trailing"),
            ("1.2 -", syntax, "needs a version after `-`"),
            ("1.2 - >=1.4", syntax, "needs a version after `-`"),
            (
                "- 1.2",
                syntax,
                "hyphen range needs a version on both sides",
            ),
            (
                "1.2 - 1.3 - 1.4",
                syntax,
                "hyphen range needs a version on both sides",
            ),
            ("1.2 -1.4", version, "no version number"),
        ];
        for (input, check, fragment) in table {
            let err = VersionConstraint::parse(input).expect_err(input);
            assert!(check(&err), "`{input}`: unexpected variant {err:?}");
            let message = err.to_string();
            assert!(
                message.contains(fragment),
                "`{input}`: message `{message}` lacks `{fragment}`"
            );
            assert!(
                message.contains(input.trim()) || input.trim().is_empty(),
                "`{input}`: {message}"
            );
            assert_eq!(err.reason(), "InvalidVersionConstraint");
        }
    }

    #[test]
    fn error_messages_show_a_valid_example() {
        let err = VersionConstraint::parse("~=1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "version constraint `~=1`: `~=1` is not a valid compatible release: a single number is not \
             allowed (PEP 440 forbids `~=1`); `~=` takes major.minor or major.minor.patch, e.g. `~=1.4` \
             (>=1.4.0 <2.0.0) or `~=1.4.2` (>=1.4.2 <1.5.0)"
        );
        let err = VersionConstraint::parse("1.x.3").unwrap_err();
        assert!(err.to_string().contains("`1.2.x`"), "{err}");
        let err = VersionConstraint::parse("1.2,,1.3").unwrap_err();
        assert!(err.to_string().contains("`>=1.0.0, <2.0.0`"), "{err}");
    }

    #[test]
    fn version_parsing() {
        let ok: &[(&str, &str)] = &[
            ("1.2.3", "1.2.3"),
            ("v1.2.3", "1.2.3"),
            (" 1.2.3 ", "1.2.3"),
            ("1.2", "1.2.0"),
            ("1", "1.0.0"),
            ("1.0.0-rc.1+build.5", "1.0.0-rc.1+build.5"),
            ("1.2-rc.1", "1.2.0-rc.1"),
            ("1.0.0-x-y.z", "1.0.0-x-y.z"),
        ];
        for (input, expected) in ok {
            assert_eq!(
                parse_version(input).unwrap(),
                Version::parse(expected).unwrap(),
                "{input}"
            );
        }
        for bad in [
            "",
            "x",
            "1.x",
            "*",
            "1.2.3.4",
            "latest",
            "01.0.0",
            "1.0.0-",
            "-1.0.0",
            "1.0.0-rc.01",
        ] {
            let err = parse_version(bad).expect_err(bad);
            assert!(
                matches!(err, VersionError::InvalidChartVersion { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn original_and_display_keep_the_input() {
        let parsed = c(" ~=0.1 ");
        assert_eq!(parsed.original(), " ~=0.1 ");
        assert_eq!(parsed.to_string(), " ~=0.1 ");
        assert_eq!(" ~=0.1 ".parse::<VersionConstraint>().unwrap(), parsed);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let max = u64::MAX;
        let bottom = Version::new(0, 0, 0);
        let top = Version::new(max, max, max);
        // (constraint, matches 0.0.0, matches MAX.MAX.MAX)
        let table = [
            (format!("^{max}"), false, true),
            (format!("~{max}.{max}"), false, true),
            (format!("~={max}.{max}"), false, true),
            (format!("~={max}.{max}.{max}"), false, true),
            (format!("{max}.x"), false, true),
            (format!(">{max}.{max}"), false, false),
            (format!("<={max}"), true, true),
            (format!("!={max}"), true, false),
            (format!("^0.0.{max}"), false, false),
            (format!("<={max}.{max}.{max}"), true, true),
        ];
        for (constraint, at_bottom, at_top) in table {
            let parsed = c(&constraint);
            assert_eq!(
                parsed.matches(&bottom),
                at_bottom,
                "`{constraint}` on 0.0.0"
            );
            assert_eq!(
                parsed.matches(&top),
                at_top,
                "`{constraint}` on MAX.MAX.MAX"
            );
        }
        // The carry keeps ranges exact: `>1.MAX` is everything from 2.0.0 on.
        let parsed = c(&format!(">1.{max}"));
        assert!(parsed.matches(&Version::new(2, 0, 0)));
        assert!(!parsed.matches(&Version::new(1, max, max)));
        assert!(c(&format!("^0.0.{max}")).matches(&Version::new(0, 0, max)));
    }

    fn partial_strategy() -> impl Strategy<Value = String> {
        let part =
            prop_oneof![4 => (0u64..4).prop_map(|n| n.to_string()), 1 => Just("x".to_string())];
        (
            prop::collection::vec(part, 1..=3),
            prop::option::of(prop_oneof![Just("rc.1"), Just("0"), Just("alpha")]),
        )
            .prop_map(|(parts, pre)| {
                // Keep wildcards trailing so the term is valid.
                let mut seen_x = false;
                let parts: Vec<String> = parts
                    .into_iter()
                    .map(|p| {
                        seen_x |= p == "x";
                        if seen_x { "x".to_string() } else { p }
                    })
                    .collect();
                match pre {
                    Some(pre) => format!("{}-{pre}", parts.join(".")),
                    None => parts.join("."),
                }
            })
    }

    fn term_strategy() -> impl Strategy<Value = String> {
        let op = prop::sample::select(vec!["", "=", "!=", ">", ">=", "<", "<=", "~", "~>", "^"]);
        (op, partial_strategy()).prop_map(|(op, v)| format!("{op}{v}"))
    }

    fn constraint_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::collection::vec(term_strategy(), 1..3), 1..3).prop_map(
            |groups| {
                groups
                    .iter()
                    .map(|terms| terms.join(", "))
                    .collect::<Vec<_>>()
                    .join(" || ")
            },
        )
    }

    fn version_strategy() -> impl Strategy<Value = String> {
        (
            0u64..4,
            0u64..4,
            0u64..4,
            prop::option::of(prop_oneof![
                Just("rc.1"),
                Just("0"),
                Just("alpha"),
                Just("beta.2")
            ]),
            any::<bool>(),
        )
            .prop_map(|(a, b, c, pre, v)| {
                let prefix = if v { "v" } else { "" };
                match pre {
                    Some(pre) => format!("{prefix}{a}.{b}.{c}-{pre}"),
                    None => format!("{prefix}{a}.{b}.{c}"),
                }
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = VersionConstraint::parse(&s);
            let _ = parse_version(&s);
        }

        #[test]
        fn parse_never_panics_on_constraint_like_text(s in "[0-9vVxX*.,|<>=!~^ +a-z-]{0,40}") {
            if let Ok(parsed) = VersionConstraint::parse(&s) {
                let _ = parsed.matches(&Version::new(1, 2, 3));
            }
            let _ = parse_version(&s);
        }

        #[test]
        fn generated_constraints_parse(constraint in constraint_strategy()) {
            prop_assert!(VersionConstraint::parse(&constraint).is_ok(), "{}", constraint);
        }

        #[test]
        fn highest_match_always_matches(
            constraint in constraint_strategy(),
            versions in prop::collection::vec(version_strategy(), 0..12),
        ) {
            let parsed = c(&constraint);
            let best = highest_match(&parsed, versions.iter().map(String::as_str));
            match best {
                Some(best) => {
                    let best_version = v(best);
                    prop_assert!(parsed.matches(&best_version));
                    for other in &versions {
                        let other = v(other);
                        if parsed.matches(&other) {
                            prop_assert!(other.cmp_precedence(&best_version) != Ordering::Greater);
                        }
                    }
                }
                None => {
                    for other in &versions {
                        prop_assert!(!parsed.matches(&v(other)));
                    }
                }
            }
        }

        #[test]
        fn stable_only_constraints_never_admit_prereleases(
            terms in prop::collection::vec(term_strategy(), 1..3),
            version in version_strategy(),
        ) {
            prop_assume!(terms.iter().all(|t| !t.contains('-')));
            let parsed = c(&terms.join(" "));
            let version = v(&version);
            if !version.pre.is_empty() {
                prop_assert!(!parsed.matches(&version));
            }
        }

        #[test]
        fn compatible_release_keeps_the_major(
            x in 0u64..1000, y in 0u64..1000,
            a in 0u64..1001, b in 0u64..1001, p in 0u64..1001,
        ) {
            let parsed = c(&format!("~={x}.{y}"));
            let version = Version::new(a, b, p);
            if a != x {
                prop_assert!(!parsed.matches(&version));
            } else {
                prop_assert_eq!(parsed.matches(&version), b >= y);
            }
        }
    }
}
