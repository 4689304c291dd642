//! Fault injection points for the tests of panic containment (SPEC section 12).

/// Fault injection for the tests (debug builds only): true the first time the
/// point `name` is reached when `SIMIAN_FAULT` names it (comma-separated).
/// Release builds compile this to `false`.
pub fn point(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        use std::sync::OnceLock;
        static NAMES: OnceLock<Vec<String>> = OnceLock::new();
        static FIRED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
        let names = NAMES.get_or_init(|| {
            std::env::var("SIMIAN_FAULT")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        });
        if names.iter().any(|n| n == name) {
            let mut fired = FIRED.lock();
            if !fired.iter().any(|n| n == name) {
                fired.push(name.to_string());
                return true;
            }
        }
    }
    let _ = name;
    false
}
