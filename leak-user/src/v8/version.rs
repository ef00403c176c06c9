//! The V8 version a node binary embeds.

use std::fmt;

use anyhow::{Context as _, Result};

use super::metadata::Symbols;

/// `major.minor.build.patch`, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, build: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            build,
            patch,
        }
    }

    /// From `v8::internal::Version::{major,minor,build,patch}_` (static ints,
    /// in `.symtab` only on recent Node).
    pub(super) fn read(symbols: &Symbols) -> Result<Version> {
        let part = |name: &str| {
            symbols
                .int(&format!("_ZN2v88internal7Version{}{name}_E", name.len() + 1))
                .and_then(|v| u32::try_from(v).ok())
                .with_context(|| format!("V8 version symbol {name}_ not found"))
        };
        Ok(Version::new(
            part("major")?,
            part("minor")?,
            part("build")?,
            part("patch")?,
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}.{}", self.major, self.minor, self.build, self.patch)
    }
}
