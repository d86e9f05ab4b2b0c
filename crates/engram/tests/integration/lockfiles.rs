//! The peer suite (bench/peers) and the fuzz targets (fuzz/) are workspaces of their own, with
//! lockfiles of their own, built with `--locked` (bench/run.sh) or on nightly: CI's
//! `cargo test --workspace` never resolves them. When a workspace crate gains a dependency, their
//! lockfiles must gain it too, or their builds refuse to start (it happened: foldhash). This
//! test reads the lockfiles instead of building those workspaces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The dependency names of each path (workspace) package of a Cargo.lock.
fn path_packages(lockfile: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(lockfile).unwrap_or_else(|e| panic!("{}: {e}", lockfile.display()));
    let mut packages = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        if field("source = ").is_some() {
            continue;
        }
        let name = field("name = ").expect("every package has a name");
        let dependencies = block
            .split_once("dependencies = [")
            .map(|(_, rest)| rest.split(']').next().unwrap_or_default())
            .unwrap_or_default()
            .split(',')
            .map(|entry| entry.trim().trim_matches('"'))
            .filter(|entry| !entry.is_empty())
            // "name" or "name version" (when several versions are locked).
            .map(|entry| entry.split(' ').next().unwrap().to_string())
            .collect();
        packages.insert(name, dependencies);
    }
    packages
}

/// The names under `[dev-dependencies]` of a workspace crate's Cargo.toml.
fn dev_dependencies(crate_name: &str) -> BTreeSet<String> {
    let manifest = repository_root().join("crates").join(crate_name).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    text.lines()
        .skip_while(|l| l.trim() != "[dev-dependencies]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split(['=', '.']).next().map(str::trim))
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_peer_suite_and_fuzz_lockfiles_lock_every_dependency_of_the_workspace_crates_they_build() {
    let workspace = path_packages(&repository_root().join("Cargo.lock"));
    for other in ["bench/peers/Cargo.lock", "fuzz/Cargo.lock"] {
        let locked = path_packages(&repository_root().join(other));
        let shared: Vec<_> = locked.keys().filter(|name| workspace.contains_key(*name)).collect();
        assert!(
            !shared.is_empty(),
            "{other} builds no workspace crate: is this test reading the right files?"
        );
        for name in shared {
            // The workspace's lockfile also lists a member's dev-dependencies; another
            // workspace builds the crate as a plain dependency, without them.
            let dev_only = dev_dependencies(name);
            let missing: Vec<_> = workspace[name]
                .difference(&locked[name])
                .filter(|d| !dev_only.contains(*d))
                .collect();
            assert!(
                missing.is_empty(),
                "{other} does not lock {missing:?}, dependencies of {name}: update it (any cargo command without --locked in its directory, e.g. `cargo tree`)"
            );
            let extra: Vec<_> = locked[name].difference(&workspace[name]).collect();
            assert!(
                extra.is_empty(),
                "{other} locks {extra:?} for {name}, which the workspace's lockfile does not"
            );
        }
    }
}
