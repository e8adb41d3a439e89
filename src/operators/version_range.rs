//! The version part of the NVD CPE match rule: a total order on version strings
//! ([`compare_versions`]) and the rule a `cpe_match` row's version field and
//! `versionStart*`/`versionEnd*` bounds apply to an observed version ([`VersionRange`]).
//! The vulnerability enrichment join calls [`VersionRange::matches`] once per (event,
//! candidate row) pair, so comparison walks both strings lazily and never allocates.
//!
//! # Version ordering
//!
//! NVD publishes no comparison algorithm, and the common matchers differ: nvdtools'
//! `smartVerCmp` compares dot-separated parts by numeric prefix and then lexically (so
//! `1.0.2k` > `1.0.2`, but `1.0` < `1.0.0` and `1.0-beta1` > `1.0`); OWASP dependency-check
//! and Dependency-Track split into numeric and letter parts and compare numbers by value,
//! otherwise lexically; Repology's libversion ranks components (pre-release < zero <
//! post-release < number < letter suffix) and counts unknown words as pre-release. This
//! module follows the ranked model, tuned to CPE data: unknown words count as patch tags
//! (`9.1.0-h3` > `9.1.0`), and letter suffixes rank with them, below numbers.
//!
//! 1. A version splits into maximal runs of ASCII digits and of ASCII letters. Every other
//!    byte (`.`, `-`, `_`, `:`, `+`, `~`, `(`, space, any non-ASCII byte, ...) only separates,
//!    and so does a digit/letter boundary: `7.4p1` is `7`, `4`, `p`, `1`.
//! 2. Each run becomes a key; keys of different kinds order as listed:
//!    - **pre-release**: `dev`/`snapshot` < `alpha` < `beta` < `pre`/`preview` < `rc`, only
//!      the stage counting. `a` and `b` mean alpha and beta only when a digit follows at once
//!      (`1.0a1`, `2.0b3`); alone they are OpenSSL letter releases (`1.0.2a`, `1.0.2b`). That
//!      is the trade-off: `1.0b` reads as a letter release, `1.0b1` as a beta.
//!    - **zero**: a number equal to 0, the release words `final`, `ga` and `release`, and the
//!      padding after the end of a version, so trailing zeros are insignificant
//!      (`1.0` = `1.0.0` = `1.0.0.Final`).
//!    - **word**: any other letter run: OpenSSL letter releases (`k`, `zg`), OpenSSH and BIND
//!      patch tags (`p1`, `P2`), hotfix and service-pack tags (`h3`, `sp1`); compared
//!      lexically and case-insensitively (`z` < `za` < `zb`).
//!    - **number**: a nonzero number, compared by value: leading zeros dropped, then by
//!      length, then digit by digit, so any length works without overflow.
//! 3. Two versions compare key by key, the shorter padded with zero.
//!
//! So `1.0.2` < `1.0.2k` < `1.0.2l` < `1.0.2zg` < `1.1.0`; `7.4` < `7.4p1` < `7.4.1`;
//! `9.11.4` < `9.11.4-P2` < `9.11.5`; `2.0rc1` < `2.0`; `1.0.0-beta1` < `1.0.0-rc1` < `1.0.0`.
//! A word sorts below any nonzero number in the same place (`1.0.2k` < `1.0.2.1`), as a
//! patch tag belongs to the release it patches. Every string maps to one sequence of keys
//! from a totally ordered set, compared lexicographically, so the order is total: reflexive,
//! antisymmetric and transitive, and "equal" means the same keys once trailing zeros are
//! dropped (`1.02` = `1.2`, `1.0.2K` = `1.0.2k`, `1-2_3` = `1.2.3`).
//!
//! # Match rule
//!
//! Bounds that are empty (or only whitespace) count as absent. If any bound is present, the
//! observed version must satisfy all present bounds, whatever the version field says (it is
//! `*` in NVD data). Otherwise the version field decides: `*`, empty or absent matches any
//! version; `-` (not applicable) matches only an observed version that is empty or `-`; any
//! other value must equal the observed version in the order above. An observed version with
//! no letter or digit in it is unknown: it matches `*` rows and (when empty or `-`) `-` rows,
//! never a range or an exact version.
//!
//! A CPE's `update` field (`cpe:2.3:a:openbsd:openssh:5.9:p1`: version `5.9`, update `p1`)
//! completes the row's version, read as the version followed by the update: an exact row
//! with a specific update admits only that update of the version (`5.9` + `p1` is the
//! observed `5.9p1`, and not `5.9` nor `5.9p2`); an end bound with one ends at that update
//! (NVD writes "through 7.2p1" as `versionEndIncluding` `7.2` with update `p1`, so `7.2p1`
//! and `7.1p2` are in, `7.2p2` is out). Start bounds are compared as written (no row of the
//! NVD data here pairs one with an update), and so is everything when the update is `*`,
//! `-`, empty or absent: the observed version is one string, so `5.9` with update `*`
//! cannot be told to admit `5.9p1` without also admitting OpenSSL's `1.0.2k` under `1.0.2`;
//! NVD writes the names that have no update with `*`, and lists `5.9` and `5.9` update `p1`
//! apart. A `*` or `-` version ignores the update.

use std::cmp::Ordering;

/// Compares two version strings in the order described in the module docs. Total and
/// panic-free on every input; allocation-free.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    compare_keys(Keys::new(a), Keys::new(b))
}

/// Compares two sequences of keys, the shorter padded with zero.
fn compare_keys<'a, 'b>(
    mut left: impl Iterator<Item = Key<'a>>,
    mut right: impl Iterator<Item = Key<'b>>,
) -> Ordering {
    loop {
        let (l, r) = match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (l, r) => (l.unwrap_or(Key::Zero), r.unwrap_or(Key::Zero)),
        };
        let ord = l.cmp_key(r);
        if ord != Ordering::Equal {
            return ord;
        }
    }
}

/// The version part of one NVD `cpe_match` row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionRange {
    /// The CPE version field: an exact version, `*` (any) or `-` (not applicable); `None` = `*`.
    pub exact: Option<String>,
    pub start_including: Option<String>,
    pub start_excluding: Option<String>,
    pub end_including: Option<String>,
    pub end_excluding: Option<String>,
    /// The CPE update field: a specific update completes `exact` or the end bounds; `*`,
    /// `-` or `None`: none.
    pub update: Option<String>,
}

impl VersionRange {
    /// Whether the observed `version` satisfies the rule. Empty strings in bounds count as absent.
    pub fn matches(&self, version: &str) -> bool {
        let start_including = present(&self.start_including);
        let start_excluding = present(&self.start_excluding);
        let end_including = present(&self.end_including);
        let end_excluding = present(&self.end_excluding);
        let update = present(&self.update).filter(|u| !matches!(*u, "*" | "-"));
        if start_including.is_some()
            || start_excluding.is_some()
            || end_including.is_some()
            || end_excluding.is_some()
        {
            let to_end = |b: &str| compare_with_update(version, b, update);
            return has_version_content(version)
                && start_including.is_none_or(|b| compare_versions(version, b).is_ge())
                && start_excluding.is_none_or(|b| compare_versions(version, b).is_gt())
                && end_including.is_none_or(|b| to_end(b).is_le())
                && end_excluding.is_none_or(|b| to_end(b).is_lt());
        }
        match self.exact.as_deref().map(str::trim) {
            None | Some("" | "*") => true,
            Some("-") => is_not_applicable(version),
            Some(exact) => {
                has_version_content(version)
                    && has_version_content(exact)
                    && compare_with_update(version, exact, update).is_eq()
            }
        }
    }
}

/// Compares `version` with a row's version followed by its update, if any. The two are read
/// as separate runs, so that `1.0` + `1` is `1.0.1`, not `1.01`.
fn compare_with_update(version: &str, row_version: &str, update: Option<&str>) -> Ordering {
    match update {
        None => compare_versions(version, row_version),
        Some(update) => compare_keys(
            Keys::new(version),
            Keys::new(row_version).chain(Keys::new(update)),
        ),
    }
}

/// A bound's text, or `None` when it is absent or blank.
fn present(bound: &Option<String>) -> Option<&str> {
    bound.as_deref().map(str::trim).filter(|b| !b.is_empty())
}

/// Whether `version` has anything to compare: at least one ASCII letter or digit.
fn has_version_content(version: &str) -> bool {
    version.bytes().any(|b| b.is_ascii_alphanumeric())
}

/// Whether an observed version says "no version": empty or `-`.
fn is_not_applicable(version: &str) -> bool {
    matches!(version.trim(), "" | "-")
}

/// Pre-release stages, lowest first.
const STAGE_DEV: u8 = 0;
const STAGE_ALPHA: u8 = 1;
const STAGE_BETA: u8 = 2;
const STAGE_PRE: u8 = 3;
const STAGE_RC: u8 = 4;

const PRE_RELEASE_WORDS: [(&[u8], u8); 7] = [
    (b"dev", STAGE_DEV),
    (b"snapshot", STAGE_DEV),
    (b"alpha", STAGE_ALPHA),
    (b"beta", STAGE_BETA),
    (b"pre", STAGE_PRE),
    (b"preview", STAGE_PRE),
    (b"rc", STAGE_RC),
];

/// Words that only say "this is the release" and so weigh as much as a trailing zero.
const RELEASE_WORDS: [&[u8]; 3] = [b"final", b"ga", b"release"];

/// One component of a version, as it takes part in the comparison.
#[derive(Clone, Copy, Debug)]
enum Key<'a> {
    /// A pre-release marker; the stage.
    Pre(u8),
    /// A zero, a release word, or the padding after the end.
    Zero,
    /// Any other letter run, compared case-insensitively.
    Word(&'a [u8]),
    /// A nonzero number: its digits without leading zeros (never empty).
    Num(&'a [u8]),
}

impl Key<'_> {
    fn rank(self) -> u8 {
        match self {
            Key::Pre(_) => 0,
            Key::Zero => 1,
            Key::Word(_) => 2,
            Key::Num(_) => 3,
        }
    }

    fn cmp_key(self, other: Key<'_>) -> Ordering {
        match (self, other) {
            (Key::Pre(a), Key::Pre(b)) => a.cmp(&b),
            (Key::Zero, Key::Zero) => Ordering::Equal,
            (Key::Word(a), Key::Word(b)) => a
                .iter()
                .map(u8::to_ascii_lowercase)
                .cmp(b.iter().map(u8::to_ascii_lowercase)),
            (Key::Num(a), Key::Num(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// The keys of a version string, produced lazily.
struct Keys<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Keys<'a> {
    fn new(version: &'a str) -> Keys<'a> {
        Keys {
            bytes: version.as_bytes(),
            pos: 0,
        }
    }

    /// The end of the run starting at `start` of bytes satisfying `in_run`.
    fn run_end(&self, start: usize, in_run: fn(&u8) -> bool) -> usize {
        self.bytes
            .get(start..)
            .and_then(|rest| rest.iter().position(|b| !in_run(b)))
            .map_or(self.bytes.len(), |len| start + len)
    }
}

impl<'a> Iterator for Keys<'a> {
    type Item = Key<'a>;

    fn next(&mut self) -> Option<Key<'a>> {
        let bytes = self.bytes;
        let start = self.pos
            + bytes
                .get(self.pos..)?
                .iter()
                .position(u8::is_ascii_alphanumeric)?;
        let first = *bytes.get(start)?;
        let (end, key) = if first.is_ascii_digit() {
            let end = self.run_end(start, u8::is_ascii_digit);
            let digits = bytes.get(start..end)?;
            let key = match digits.iter().position(|&d| d != b'0') {
                Some(nonzero) => Key::Num(digits.get(nonzero..)?),
                None => Key::Zero,
            };
            (end, key)
        } else {
            let end = self.run_end(start, u8::is_ascii_alphabetic);
            let digit_follows = bytes.get(end).is_some_and(u8::is_ascii_digit);
            (end, classify_word(bytes.get(start..end)?, digit_follows))
        };
        self.pos = end;
        Some(key)
    }
}

/// The key of a letter run; `digit_follows` says whether a digit comes right after it.
fn classify_word(word: &[u8], digit_follows: bool) -> Key<'_> {
    if let Some(&(_, stage)) = PRE_RELEASE_WORDS
        .iter()
        .find(|(marker, _)| word.eq_ignore_ascii_case(marker))
    {
        return Key::Pre(stage);
    }
    if digit_follows {
        if word.eq_ignore_ascii_case(b"a") {
            return Key::Pre(STAGE_ALPHA);
        }
        if word.eq_ignore_ascii_case(b"b") {
            return Key::Pre(STAGE_BETA);
        }
    }
    if RELEASE_WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)) {
        return Key::Zero;
    }
    Key::Word(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering::{Equal, Greater, Less};
    use std::collections::BTreeSet;

    fn cmp(a: &str, b: &str) -> Ordering {
        compare_versions(a, b)
    }

    /// Asserts `a` < `b` both ways round.
    fn assert_lt(a: &str, b: &str) {
        assert_eq!(cmp(a, b), Less, "expected {a:?} < {b:?}");
        assert_eq!(cmp(b, a), Greater, "expected {b:?} > {a:?}");
    }

    fn assert_eq_v(a: &str, b: &str) {
        assert_eq!(cmp(a, b), Equal, "expected {a:?} == {b:?}");
        assert_eq!(cmp(b, a), Equal, "expected {b:?} == {a:?}");
    }

    fn exact(v: &str) -> VersionRange {
        VersionRange {
            exact: Some(v.to_string()),
            ..VersionRange::default()
        }
    }

    /// openssh `5.9p1` is NVD version `5.9` update `p1`: such a row admits `5.9p1` only,
    /// not `5.9` nor another update; an update `*` or `-` admits the bare version only.
    #[test]
    fn an_exact_rule_with_an_update_admits_only_that_update() {
        let with = |v: &str, u: &str| VersionRange {
            update: Some(u.to_string()),
            ..exact(v)
        };
        let p1 = with("5.9", "p1");
        assert!(p1.matches("5.9p1"));
        assert!(p1.matches("5.9.p1"));
        assert!(p1.matches("5.9P1"));
        assert!(!p1.matches("5.9"));
        assert!(!p1.matches("5.9p2"));
        assert!(!p1.matches("5.8p1"));
        assert!(with("1.0", "1").matches("1.0.1"));
        assert!(!with("1.0", "1").matches("1.01"));
        assert!(with("2.0", "rc1").matches("2.0-rc1"));
        assert!(!with("2.0", "rc1").matches("2.0"));
        for any in ["*", "-", "", " "] {
            assert!(with("5.9", any).matches("5.9"), "update {any:?}");
            assert!(!with("5.9", any).matches("5.9p1"), "update {any:?}");
        }
        // Start bounds and `*` versions do not look at the update.
        let mut r = range("5.0", "", "", "6.0");
        r.update = Some("p1".into());
        assert!(r.matches("5.9p1") && r.matches("5.9") && r.matches("5.0"));
        assert!(with("*", "p1").matches("7.0"));
    }

    /// NVD's CVE-2016-3115 ("OpenSSH before 7.2p2") is `versionEndIncluding` `7.2` with update
    /// `p1`: the bound is `7.2p1`. Read without its update it was `7.2`, and the affected
    /// `7.2p1` fell outside.
    #[test]
    fn an_end_bound_with_an_update_ends_at_that_update() {
        let through = |end: &str, u: &str| VersionRange {
            update: Some(u.to_string()),
            ..range("", "", end, "")
        };
        let r = through("7.2", "p1");
        for v in ["7.2p1", "7.2", "7.1p2", "6.6p1", "1.2.3"] {
            assert!(r.matches(v), "{v}");
        }
        for v in ["7.2p2", "7.2.1", "7.3"] {
            assert!(!r.matches(v), "{v}");
        }
        let before = VersionRange {
            update: Some("r1".into()),
            ..range("", "", "", "5.6.36")
        };
        assert!(before.matches("5.6.36") && !before.matches("5.6.36-r1"));
        for any in ["*", "-", ""] {
            let r = through("7.2", any);
            assert!(r.matches("7.2") && !r.matches("7.2p1"), "update {any:?}");
        }
    }

    fn range(si: &str, se: &str, ei: &str, ee: &str) -> VersionRange {
        let opt = |s: &str| Some(s.to_string());
        VersionRange {
            exact: opt("*"),
            start_including: opt(si),
            start_excluding: opt(se),
            end_including: opt(ei),
            end_excluding: opt(ee),
            update: None,
        }
    }

    #[test]
    fn numeric_components_compare_by_value() {
        assert_lt("2.4.29", "2.4.41");
        assert_lt("2.4.9", "2.4.10");
        assert_lt("9", "10");
        assert_eq_v("1.02", "1.2");
        assert_eq_v("1.0002.03", "1.2.3");
        assert_lt(
            "1.99999999999999999999999999998",
            "1.99999999999999999999999999999",
        );
        assert_lt(
            "1.99999999999999999999999999999",
            "1.100000000000000000000000000000",
        );
        assert_eq_v("1.000000000000000000000000000000000042", "1.42");
        assert_lt("20101121", "20101122");
    }

    #[test]
    fn trailing_zeros_are_insignificant() {
        assert_eq_v("1.0", "1.0.0");
        assert_eq_v("1", "1.0.0.0");
        assert_eq_v("", "0.0");
        assert_lt("1.0", "1.0.0.1");
        assert_lt("1.0.0.0.1", "1.1");
    }

    #[test]
    fn openssl_letter_releases_sort_after_the_base() {
        assert_lt("1.0.2", "1.0.2k");
        assert_lt("1.0.2k", "1.0.2l");
        assert_lt("1.0.2k", "1.0.2zg");
        assert_lt("1.0.2zg", "1.1.0");
        assert_lt("0.9.8z", "0.9.8za");
        assert_lt("0.9.8y", "0.9.8za");
        assert_lt("0.9.8za", "0.9.8zh");
        assert_lt("1.0.2a", "1.0.2b");
        assert_lt("1.1.1w", "3.0.0");
        let ordered = [
            "0.9.8", "0.9.8a", "0.9.8m", "0.9.8z", "0.9.8za", "0.9.8zh", "1.0.0", "1.0.0t",
            "1.0.1", "1.0.1u", "1.0.2", "1.0.2a", "1.0.2k", "1.0.2y", "1.0.2za", "1.0.2zh",
            "1.1.0", "1.1.0l", "1.1.1", "1.1.1w", "3.0.0", "3.0.10", "3.1.0",
        ];
        let mut shuffled = ordered;
        shuffled.reverse();
        shuffled.sort_by(|a, b| cmp(a, b));
        assert_eq!(shuffled, ordered);
    }

    #[test]
    fn patch_tags_sort_between_the_release_and_the_next() {
        // OpenSSH portable releases.
        assert_lt("7.4", "7.4p1");
        assert_lt("7.4p1", "7.4p2");
        assert_lt("7.4p1", "7.5");
        assert_lt("7.4p1", "7.4.1");
        assert_lt("5.9p1", "6.0");
        assert_lt("5.5p2", "5.5p10");
        // BIND patch releases.
        assert_lt("9.11.4", "9.11.4-P2");
        assert_lt("9.11.4-P2", "9.11.4-P10");
        assert_lt("9.11.4-P2", "9.11.5");
        // Hotfixes and vendor tags.
        assert_lt("10.1.0", "10.1.0-h3");
        assert_lt("10.1.0-h3", "10.1.1");
        assert_lt("1.0.1e", "1.0.1e-25.el7");
    }

    #[test]
    fn pre_releases_sort_before_the_release() {
        assert_lt("1.0.0-beta1", "1.0.0");
        assert_lt("2.0rc1", "2.0");
        assert_lt("1.1.1-pre9", "1.1.1");
        assert_lt("1.0.0-beta1", "1.0.0-beta2");
        assert_lt("1.0.0-beta", "1.0.0-beta1");
        assert_lt("1.0.0-rc1", "1.0.0-rc10");
        assert_lt("0.9.9", "1.0.0-alpha1");
        assert_lt("2.2.0-SNAPSHOT", "2.2.0");
        let stages = [
            "3.0-dev",
            "3.0a1",
            "3.0alpha2",
            "3.0b1",
            "3.0-pre1",
            "3.0rc1",
            "3.0",
        ];
        for pair in stages.windows(2) {
            assert_lt(pair[0], pair[1]);
        }
        assert_eq_v("1.0a1", "1.0alpha1");
        assert_eq_v("1.0.b2", "1.0-beta2");
        assert_eq_v("1.0preview1", "1.0-pre1");
        // Without a digit after them, `a` and `b` are letter releases.
        assert_lt("1.0", "1.0a");
        assert_lt("1.0a1", "1.0");
    }

    #[test]
    fn release_words_weigh_as_zero() {
        assert_eq_v("4.1.0.Final", "4.1.0");
        assert_eq_v("5.3.20.RELEASE", "5.3.20");
        assert_eq_v("2.0-GA", "2.0");
        assert_lt("4.1.0.Final", "4.1.0.1");
    }

    #[test]
    fn words_sit_between_zero_and_nonzero_numbers() {
        assert_lt("1.0.2k", "1.0.2.1");
        assert_lt("1.0.2.0", "1.0.2k");
        assert_lt("1.0.beta", "1.0.0");
        assert_lt("1.0.0", "1.0.x");
    }

    #[test]
    fn separators_are_interchangeable() {
        assert_eq_v("1.2.3", "1-2_3");
        assert_eq_v("1.2.3", "1:2:3");
        assert_eq_v("1.2.3", "1.2+3");
        assert_eq_v("7.4p1", "7.4.p.1");
        assert_eq_v("12.2(55)se", "12.2.55.se");
        assert_eq_v("1.0..2", "1.0.2");
        assert_eq_v(".1.", "1");
    }

    #[test]
    fn letters_compare_case_insensitively() {
        assert_eq_v("1.0.2K", "1.0.2k");
        assert_eq_v("2.0RC1", "2.0rc1");
        assert_eq_v("9.11.4-p2", "9.11.4-P2");
        assert_lt("1.0.2K", "1.0.2l");
    }

    #[test]
    fn odd_input_is_ordered_without_panicking() {
        assert_eq_v("", "-");
        assert_eq_v("*", "");
        assert_eq_v("\u{e9}", "");
        assert_eq_v("1\u{e9}2", "1.2");
        assert_lt("", "a");
        assert_lt("1.0\u{0}", "1.0\u{0}1");
        let long = "9.".repeat(10_000);
        assert_lt(&long, &format!("{long}1"));
        let digits = "7".repeat(100_000);
        assert_eq_v(&digits, &format!("000{digits}"));
    }

    #[test]
    fn exact_rows_match_equal_versions() {
        assert!(exact("1.0.2").matches("1.0.2"));
        assert!(exact("1.0").matches("1.0.0"));
        assert!(exact("1.0.2K").matches("1.0.2k"));
        assert!(exact(" 1.0.2 ").matches("1.0.2"));
        assert!(!exact("1.0.2").matches("1.0.2k"));
        assert!(!exact("1.0.2").matches("1.0.20"));
        assert!(!exact("1.0.2").matches(""));
        assert!(!exact("0").matches("-"));
        assert!(!exact("?").matches("0"));
    }

    #[test]
    fn any_rows_match_every_version() {
        let rows = [VersionRange::default(), exact("*"), exact(""), exact(" * ")];
        for row in &rows {
            for v in ["1.0.2", "", "-", "anything at all", "\u{1F600}"] {
                assert!(row.matches(v), "{row:?} should match {v:?}");
            }
        }
    }

    #[test]
    fn not_applicable_rows_match_only_missing_versions() {
        let row = exact("-");
        assert!(row.matches(""));
        assert!(row.matches("-"));
        assert!(row.matches(" - "));
        assert!(!row.matches("0"));
        assert!(!row.matches("1.0.2"));
        assert!(!row.matches("*"));
    }

    #[test]
    fn each_bound_is_checked() {
        let si = range("1.0.2", "", "", "");
        assert!(si.matches("1.0.2") && si.matches("1.0.2a") && !si.matches("1.0.1u"));
        let se = range("", "1.0.2", "", "");
        assert!(!se.matches("1.0.2") && se.matches("1.0.2a") && !se.matches("1.0.1"));
        let ei = range("", "", "1.0.2zh", "");
        assert!(ei.matches("1.0.2zh") && ei.matches("1.0.2") && !ei.matches("1.1.0"));
        let ee = range("", "", "", "1.0.2zh");
        assert!(!ee.matches("1.0.2zh") && ee.matches("1.0.2zg") && !ee.matches("1.1.0"));
    }

    #[test]
    fn all_present_bounds_must_hold() {
        let row = range("1.0.2", "", "", "1.0.2zh");
        assert!(row.matches("1.0.2"));
        assert!(row.matches("1.0.2k"));
        assert!(row.matches("1.0.2zg"));
        assert!(!row.matches("1.0.2zh"));
        assert!(!row.matches("1.0.1u"));
        assert!(!row.matches("1.1.0"));
        let openssh = range("", "5.9p1", "7.4p1", "");
        assert!(!openssh.matches("5.9p1"));
        assert!(openssh.matches("6.0"));
        assert!(openssh.matches("7.4"));
        assert!(openssh.matches("7.4p1"));
        assert!(!openssh.matches("7.4p2"));
    }

    #[test]
    fn bounds_decide_over_the_version_field() {
        let mut row = range("", "", "", "2.0");
        row.exact = Some("3.0".to_string());
        assert!(row.matches("1.5"));
        assert!(!row.matches("3.0"));
        row.exact = Some("-".to_string());
        assert!(row.matches("1.5"));
    }

    #[test]
    fn blank_bounds_count_as_absent() {
        assert!(range("", "", "", "").matches("42"));
        assert!(range(" ", "", "\t", "").matches("42"));
        let mut row = range("", "", "", "");
        row.exact = Some("1.0".to_string());
        assert!(row.matches("1.0.0"));
        assert!(!row.matches("1.1"));
    }

    #[test]
    fn unknown_versions_never_fall_in_a_range() {
        let row = range("", "", "", "1.0.2zh");
        for v in ["", "-", "*", " ", "..."] {
            assert!(!row.matches(v), "{v:?} should not match a range");
        }
        assert!(row.matches("0"));
    }

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,3}",
            "0{1,3}",
            prop::sample::select(vec![
                "a", "b", "k", "p", "P", "z", "za", "zg", "alpha", "Beta", "rc", "RC", "pre",
                "preview", "dev", "final", "GA", "sp", "h",
            ])
            .prop_map(String::from),
            "[a-zA-Z]{1,3}",
            "[._:+~ -]",
        ]
    }

    fn version_string() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..8).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn order_is_reflexive_and_antisymmetric(a in version_string(), b in version_string()) {
            prop_assert_eq!(cmp(&a, &a), Equal);
            prop_assert_eq!(cmp(&a, &b), cmp(&b, &a).reverse());
        }

        #[test]
        fn order_is_transitive(
            a in version_string(),
            b in version_string(),
            c in version_string(),
        ) {
            let v = [a, b, c];
            for [x, y, z] in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
                let (x, y, z) = (&v[x], &v[y], &v[z]);
                let (xy, yz, xz) = (cmp(x, y), cmp(y, z), cmp(x, z));
                if xy.is_le() && yz.is_le() {
                    prop_assert!(xz.is_le(), "{x:?} <= {y:?} <= {z:?} but {xz:?}");
                    prop_assert_eq!(xz.is_eq(), xy.is_eq() && yz.is_eq());
                }
                // Equal versions are interchangeable against any third one.
                if xy.is_eq() {
                    prop_assert_eq!(xz, cmp(y, z));
                }
            }
        }

        #[test]
        fn separators_and_case_do_not_change_the_order(a in version_string(), b in version_string()) {
            let dotted = |s: &str| s.replace(['-', '_', ':', '+', '~', ' '], ".");
            prop_assert_eq!(cmp(&a, &b), cmp(&dotted(&a), &dotted(&b)));
            prop_assert_eq!(cmp(&a, &b), cmp(&a.to_ascii_uppercase(), &b));
        }

        #[test]
        fn exact_rows_match_their_own_version(a in version_string()) {
            let wildcard = matches!(a.trim(), "" | "*" | "-");
            prop_assert_eq!(exact(&a).matches(&a), wildcard || has_version_content(&a));
        }

        #[test]
        fn arbitrary_text_never_panics(a in any::<String>(), b in any::<String>()) {
            let o = cmp(&a, &b);
            prop_assert_eq!(o, cmp(&b, &a).reverse());
            let row = VersionRange {
                exact: Some(b.clone()),
                start_including: Some(a.clone()),
                start_excluding: None,
                end_including: Some(b.clone()),
                end_excluding: None,
                update: None,
            };
            let _ = row.matches(&a);
            let _ = exact(&b).matches(&a);
        }
    }

    /// Splits one CSV line into fields: commas separate, a field may be double-quoted, and
    /// `""` inside quotes is a literal quote. Quoted newlines are not supported.
    fn split_csv_line(line: &str) -> Vec<String> {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut field)),
                _ => field.push(c),
            }
        }
        fields.push(field);
        fields
    }

    #[test]
    fn csv_lines_split_on_unquoted_commas() {
        assert_eq!(split_csv_line("a,,b"), ["a", "", "b"]);
        assert_eq!(split_csv_line(r#"a,"b,c","d""e""#), ["a", "b,c", "d\"e"]);
    }

    /// The data manifest's check: the vulnerable `openssl:openssl` rows of the NVD subset that
    /// match version 1.0.2 belong to 70 CVEs, 53 of them through an exact version row. The one
    /// non-vulnerable row (openssl `*` as a platform for CVE-2009-3767) is left out: it says
    /// where another product runs, not that OpenSSL is affected.
    #[test]
    fn nvd_subset_openssl_1_0_2_matches_the_manifest() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/nvd/nvd-subset-cpe-matches.csv"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipping the NVD data check: {path} is not there");
            return;
        };
        let mut lines = text.lines();
        let header = split_csv_line(lines.next().expect("a header line"));
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        let (cve, vulnerable, vendor, product) = (
            col("cve_id"),
            col("vulnerable"),
            col("vendor"),
            col("product"),
        );
        let version = col("version");
        let bounds = [
            col("versionStartIncluding"),
            col("versionStartExcluding"),
            col("versionEndIncluding"),
            col("versionEndExcluding"),
        ];
        let mut all = BTreeSet::new();
        let mut through_exact = BTreeSet::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f = split_csv_line(line);
            let get = |i: usize| f.get(i).map(|s| s.trim()).unwrap_or("");
            if get(vendor) != "openssl"
                || get(product) != "openssl"
                || !get(vulnerable).eq_ignore_ascii_case("true")
            {
                continue;
            }
            let bound = |i: usize| Some(get(bounds[i]).to_string());
            let row = VersionRange {
                exact: Some(get(version).to_string()),
                start_including: bound(0),
                start_excluding: bound(1),
                end_including: bound(2),
                end_excluding: bound(3),
                update: None,
            };
            if row.matches("1.0.2") {
                all.insert(get(cve).to_string());
                let is_range = bounds.iter().any(|&i| !get(i).is_empty());
                if !is_range && !matches!(get(version), "*" | "-" | "") {
                    through_exact.insert(get(cve).to_string());
                }
            }
        }
        assert_eq!(all.len(), 70, "CVEs matching openssl 1.0.2: {all:?}");
        assert_eq!(
            through_exact.len(),
            53,
            "through exact rows: {through_exact:?}"
        );
    }
}
