//! Replays every file of `fuzz/seeds/<target>/` (hand-written inputs) and `fuzz/corpus/<target>/`
//! (what the fuzzers found, minimised) through the function its cargo-fuzz target drives
//! (`portico::fuzzing`), so every input that once crashed stays a test in the ordinary run. And
//! the JWT seeds still mean what their names say: the valid token verifies, each forgery is
//! refused.

use portico::fuzzing::{self, TARGETS};
use portico_gateway::token;
use std::path::{Path, PathBuf};

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz").join(kind).join(target)
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir(kind, target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_runs_without_a_panic() {
    for (target, run) in TARGETS {
        let (seeds, corpus) = (inputs("seeds", target), inputs("corpus", target));
        assert!(seeds.len() >= 5, "fuzz/seeds/{target} holds only {} inputs", seeds.len());
        assert!(corpus.len() >= 100, "fuzz/corpus/{target} holds only {} inputs", corpus.len());
        for file in seeds.into_iter().chain(corpus) {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{target}: {} panics", file.display());
            }
        }
    }
}

#[test]
fn the_jwt_fixtures_are_what_their_names_say() {
    let dir = fuzz_dir("seeds", "jwt");
    let verify = |name: &str| {
        let t = std::fs::read_to_string(dir.join(name)).unwrap();
        token::verify(&fuzzing::TOKEN_SNAPSHOT, Some(&*fuzzing::TRUST), t.trim()).map_err(|r| r.0)
    };
    let caller = verify("valid").expect("the valid fixture verifies");
    assert_eq!(caller.consumer_slug.as_str(), "globex");
    assert!(caller.allows("weather") && !caller.allows("quotes"));
    for (name, why) in [
        ("alg-none", "not a valid JWT"),
        ("hs256", "EdDSA"),
        ("id-token", "typ must be at+jwt"),
        ("expired", "expired"),
        ("string-exp", "wrong format"),
        ("wrong-aud", "another audience"),
        ("wrong-iss", "issued by someone else"),
        ("unknown-kid", "does not trust"),
        ("no-kid", "names no signing key"),
        ("bad-app-id", "malformed"),
        ("garbage", "not a valid JWT"),
    ] {
        let refused = verify(name).expect_err(name);
        assert!(refused.contains(why), "{name}: {refused}");
    }
}
