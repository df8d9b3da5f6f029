//! The version handshake between the worker and the extension: at connect the worker reads the
//! installed extension's version (`pg_catalog.pg_extension.extversion`) and refuses to work with
//! one outside its series, naming both versions and the fix. The CLI says the same.
//!
//! The rule: compatible iff the same major.minor. Before 1.0 (semver 0.x) the minor is the
//! breaking part, and a patch release never changes the SQL API a worker calls. An extension
//! update keeps the previous series' worker calls working, so the rolling order is: extension
//! first, then workers (docs/runbook.md, "Upgrading").

use std::fmt;

/// This worker's version (the workspace version).
pub const WORKER: &str = env!("CARGO_PKG_VERSION");

/// The extension versions this worker runs against: its own major.minor series (`0.2.x` for the
/// worker 0.2.0). The one place the supported range is stated.
pub const SUPPORTED: Series = Series::of(WORKER);

/// A major.minor release series: every x.y.z with the same x.y.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub major: u64,
    pub minor: u64,
}

impl Series {
    /// The series of `version` (`major.minor[.patch][-pre]`), at compile time: a malformed
    /// version fails the build.
    const fn of(version: &str) -> Series {
        let b = version.as_bytes();
        let mut i = 0;
        let mut major = 0u64;
        while i < b.len() && b[i] != b'.' {
            assert!(b[i].is_ascii_digit(), "the major version must be a number");
            major = major * 10 + (b[i] - b'0') as u64;
            i += 1;
        }
        assert!(i < b.len(), "a version is major.minor[.patch]");
        i += 1;
        let start = i;
        let mut minor = 0u64;
        while i < b.len() && b[i].is_ascii_digit() {
            minor = minor * 10 + (b[i] - b'0') as u64;
            i += 1;
        }
        assert!(i > start, "the minor version must be a number");
        Series { major, minor }
    }

    /// The series of `version`, or None when it is not `major.minor[.patch][-pre]`.
    pub fn parse(version: &str) -> Option<Series> {
        let mut parts = version.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?;
        // `0.2` and `0.2.1`, but also `0.2-rc1`: the minor ends at the first non-digit.
        let digits = minor
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(minor.len());
        let minor = minor[..digits].parse().ok()?;
        Some(Series { major, minor })
    }

    /// True when `version` belongs to this series.
    pub fn contains(&self, version: &str) -> bool {
        Series::parse(version) == Some(*self)
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.x", self.major, self.minor)
    }
}

/// The installed extension is not of the series this worker supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the worker {worker} supports the extension {supported}; this database has {extension}: {}", self.fix())]
pub struct Mismatch {
    /// This worker's version.
    pub worker: &'static str,
    /// The series it supports.
    pub supported: Series,
    /// The version the database has (`pg_extension.extversion`).
    pub extension: String,
}

impl Mismatch {
    /// What to do: update an older extension, or run a worker of the database's series.
    fn fix(&self) -> String {
        match Series::parse(&self.extension) {
            Some(theirs)
                if (theirs.major, theirs.minor) < (self.supported.major, self.supported.minor) =>
            {
                format!(
                    "run ALTER EXTENSION fraiseql_observers UPDATE (docs/runbook.md, \"Upgrading\"), or run a worker of version {theirs}"
                )
            }
            Some(theirs) => format!(
                "run a worker of version {theirs} (workers are upgraded after the extension: docs/runbook.md, \"Upgrading\")"
            ),
            None => format!(
                "install a released version of the extension ({} for this worker: docs/runbook.md, \"Upgrading\")",
                self.supported
            ),
        }
    }
}

/// Ok when this worker supports the extension `version`, else the [`Mismatch`] to report.
pub fn check(extension: &str) -> Result<(), Mismatch> {
    check_against(SUPPORTED, WORKER, extension)
}

fn check_against(supported: Series, worker: &'static str, extension: &str) -> Result<(), Mismatch> {
    if supported.contains(extension) {
        Ok(())
    } else {
        Err(Mismatch {
            worker,
            supported,
            extension: extension.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S02: Series = Series { major: 0, minor: 2 };

    #[test]
    fn the_supported_series_is_the_workers_own() {
        assert_eq!(Series::parse(WORKER), Some(SUPPORTED));
        assert!(check(WORKER).is_ok());
    }

    #[test]
    fn same_major_minor_is_compatible_whatever_the_patch() {
        for v in ["0.2.0", "0.2.7", "0.2", "0.2.1-rc1", "0.2-rc1", " 0.2.3 "] {
            assert!(check_against(S02, "0.2.0", v).is_ok(), "{v}");
        }
    }

    #[test]
    fn another_minor_or_major_is_not() {
        for v in [
            "0.1.0", "0.3.0", "1.2.0", "0.20.0", "0.12.0", "", "latest", "0", "x.2.0",
        ] {
            assert!(check_against(S02, "0.2.0", v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn an_older_extension_names_both_versions_and_the_update() {
        let e = check_against(S02, "0.2.0", "0.1.0").expect_err("older");
        assert_eq!(
            e.to_string(),
            "the worker 0.2.0 supports the extension 0.2.x; this database has 0.1.0: run ALTER EXTENSION fraiseql_observers UPDATE (docs/runbook.md, \"Upgrading\"), or run a worker of version 0.1.x"
        );
    }

    #[test]
    fn a_newer_extension_asks_for_a_newer_worker() {
        let e = check_against(S02, "0.2.0", "0.3.1").expect_err("newer");
        let text = e.to_string();
        assert!(text.contains("the worker 0.2.0"), "{text}");
        assert!(text.contains("this database has 0.3.1"), "{text}");
        assert!(text.contains("run a worker of version 0.3.x"), "{text}");
        assert!(!text.contains("ALTER EXTENSION"), "{text}");
    }

    #[test]
    fn an_unreadable_version_is_refused_with_the_supported_series() {
        let text = check_against(S02, "0.2.0", "dev")
            .expect_err("bad")
            .to_string();
        assert!(text.contains("this database has dev"), "{text}");
        assert!(text.contains("0.2.x for this worker"), "{text}");
    }

    #[test]
    fn the_compile_time_parser_agrees_with_the_runtime_one() {
        for v in ["0.2.0", "1.10.3", "12.0.1-beta"] {
            assert_eq!(Some(Series::of(v)), Series::parse(v), "{v}");
        }
        assert_eq!(S02.to_string(), "0.2.x");
    }
}
