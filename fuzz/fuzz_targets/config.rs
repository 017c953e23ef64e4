//! Config text: YAML, `${VAR}` substitution, typed fields (durations, sizes, listeners, plugin
//! mappings). Never a panic; errors are data.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |name: &str| (name.len() % 2 == 0).then(|| format!("v-{name}"));
    let _ = gatehouse::config::parse_tree(text, &lookup);
});
