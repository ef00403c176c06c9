//! V8's heap pages as the page hooks see them, per V8 line: where the
//! chunk AllocatePage returns keeps its size, and how V8's AllocationSpace
//! ids map to leakscope's (V8 11's numbering, extended), which are stable
//! in reports whatever the target's V8.
//!
//! Measured on Node 18.20.8, 20.20.2, 22.23.5, 24.22.3 and 26.12.1: V8 10
//! and 11 return the chunk, whose size is its first word; V8 12 put flags
//! and a metadata pointer before it; V8 13 returns the (separately
//! allocated) page metadata, size after its vtable, heap and chunk address.

use leak_common::V8PageLayout;

use super::version::Version;

/// leakscope's id of large-object code space.
pub const CODE_LARGE_SPACE: u8 = 7;

/// leakscope's space ids and their names in reports.
const SPACE_NAMES: &[(u8, &str)] = &[
    (0, "read_only"),
    (1, "new"),
    (2, "old"),
    (3, "code"),
    (4, "shared"),
    (5, "new_large"),
    (6, "large"),
    (CODE_LARGE_SPACE, "code_large"),
    (8, "shared_large"),
    (9, "map"),
    (10, "trusted"),
    (11, "shared_trusted"),
    (12, "trusted_large"),
    (13, "shared_trusted_large"),
];

/// V8 10: new space last, a map space.
const SPACES_V10: &[u8] = &[0, 2, 3, 9, 6, 7, 5, 1];
const SPACES_V11: &[u8] = &[0, 1, 2, 3, 4, 5, 6, 7, 8];
/// V8 12: trusted spaces.
const SPACES_V12: &[u8] = &[0, 1, 2, 3, 4, 10, 5, 6, 7, 8, 12];
/// V8 13 and 14: shared trusted spaces.
const SPACES_V13: &[u8] = &[0, 1, 2, 3, 4, 10, 11, 5, 6, 7, 8, 13, 12];

/// The page layout of V8 `version`, or None for a line leakscope has not
/// measured (its page sizes are then not read: never wrong figures).
pub fn layout(version: Version) -> Option<V8PageLayout> {
    let (chunk_size, spaces) = match (version.major, version.minor) {
        (10, 2) => (0, SPACES_V10),
        (11, 3) => (0, SPACES_V11),
        (12, 4) => (0x10, SPACES_V12),
        (13, 6) | (14, 6) => (0x18, SPACES_V13),
        _ => return None,
    };
    let mut space_ids = [V8PageLayout::UNKNOWN_SPACE; V8PageLayout::SPACES];
    space_ids[..spaces.len()].copy_from_slice(spaces);
    Some(V8PageLayout {
        enabled: 1,
        chunk_size,
        space_ids,
    })
}

/// The report's name of leakscope space id `id`.
pub fn space_name(id: u8) -> String {
    SPACE_NAMES
        .iter()
        .find(|(known, _)| *known == id)
        .map_or_else(|| format!("space_{id}"), |(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_lines_spaces_to_the_same_names() {
        // The large-object space, as v8.getHeapSpaceStatistics() orders them on each line.
        for (version, v8_id) in [
            (Version::new(10, 2, 154, 26), 4),
            (Version::new(11, 3, 244, 8), 6),
            (Version::new(12, 4, 254, 21), 7),
            (Version::new(13, 6, 233, 17), 8),
            (Version::new(14, 6, 202, 34), 8),
        ] {
            let layout = layout(version).expect("a measured line");
            assert_eq!(space_name(layout.space_ids[v8_id]), "large", "V8 {version}");
            assert_eq!(
                space_name(layout.space_ids[1]),
                if version.major == 10 { "old" } else { "new" }
            );
        }
        assert_eq!(layout(Version::new(15, 0, 0, 0)), None);
        assert_eq!(space_name(V8PageLayout::UNKNOWN_SPACE), "space_255");
    }
}
