//! The `WDMOE_*` environment switches (comparisons and tuning: every one
//! has a default, and none is needed): one reader for each kind of value,
//! so that a value a switch cannot use is reported on stderr, once per
//! read, instead of silently running the default under a name that says
//! otherwise.

use std::str::FromStr;

/// An on/off switch: on unless `var` is `off`. A value other than `off`
/// or `1` is reported (the switch stays on).
pub(crate) fn switch(var: &str, off: &str) -> bool {
    match std::env::var(var) {
        Ok(v) if v == off => false,
        Ok(v) if v == "1" => true,
        Ok(v) => {
            reject(var, &v, &format!("`{off}` (off) or `1` (on); kept on"));
            true
        }
        Err(_) => true,
    }
}

/// [`switch`] read once into `cell` (each switch keeps its own).
pub(crate) fn switch_once(cell: &std::sync::OnceLock<bool>, var: &str, off: &str) -> bool {
    *cell.get_or_init(|| switch(var, off))
}

/// A number: `None` when `var` is unset, or (reported) when its value does
/// not parse as a `T` or fails `ok`, which `expect` describes.
pub(crate) fn number<T: FromStr>(var: &str, ok: impl Fn(&T) -> bool, expect: &str) -> Option<T> {
    let v = std::env::var(var).ok()?;
    match v.trim().parse::<T>() {
        Ok(x) if ok(&x) => Some(x),
        _ => {
            reject(var, &v, expect);
            None
        }
    }
}

/// Three comma-separated integers (a launch shape): `None` when `var` is
/// unset, or (reported) when its value is not three integers passing `ok`.
pub(crate) fn triple(
    var: &str,
    ok: impl Fn((u32, u32, u32)) -> bool,
    expect: &str,
) -> Option<(u32, u32, u32)> {
    let v = std::env::var(var).ok()?;
    let p: Result<Vec<u32>, _> = v.split(',').map(|x| x.trim().parse::<u32>()).collect();
    match p.as_deref() {
        Ok(&[a, b, c]) if ok((a, b, c)) => Some((a, b, c)),
        _ => {
            reject(var, &v, expect);
            None
        }
    }
}

fn reject(var: &str, value: &str, expect: &str) {
    eprintln!("wdmoe: ignoring {var}={value:?}: expected {expect}");
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test reads variables no other test sets.
    #[test]
    fn numbers_and_shapes_take_valid_values_and_refuse_the_rest() {
        std::env::set_var("WDMOE_TEST_NUM", " 64 ");
        assert_eq!(
            number::<usize>("WDMOE_TEST_NUM", |&k| k >= 32, "k >= 32"),
            Some(64)
        );
        std::env::set_var("WDMOE_TEST_NUM", "16");
        assert_eq!(
            number::<usize>("WDMOE_TEST_NUM", |&k| k >= 32, "k >= 32"),
            None
        );
        std::env::set_var("WDMOE_TEST_NUM", "5O");
        assert_eq!(
            number::<usize>("WDMOE_TEST_NUM", |_| true, "an integer"),
            None
        );
        std::env::remove_var("WDMOE_TEST_NUM");
        assert_eq!(
            number::<usize>("WDMOE_TEST_NUM", |_| true, "an integer"),
            None
        );

        std::env::set_var("WDMOE_TEST_SHAPE", "8, 4,8");
        assert_eq!(
            triple("WDMOE_TEST_SHAPE", |_| true, "w,u,s"),
            Some((8, 4, 8))
        );
        for bad in ["8,4", "8,4,8,1", "8,x,8", ""] {
            std::env::set_var("WDMOE_TEST_SHAPE", bad);
            assert_eq!(
                triple("WDMOE_TEST_SHAPE", |_| true, "w,u,s"),
                None,
                "{bad:?}"
            );
        }
        std::env::set_var("WDMOE_TEST_SHAPE", "8,2,8");
        assert_eq!(
            triple("WDMOE_TEST_SHAPE", |(_, u, _)| u >= 4, "u >= 4"),
            None
        );
    }

    #[test]
    fn switches_are_on_unless_set_to_their_off_value() {
        std::env::remove_var("WDMOE_TEST_SWITCH");
        assert!(switch("WDMOE_TEST_SWITCH", "0"));
        std::env::set_var("WDMOE_TEST_SWITCH", "0");
        assert!(!switch("WDMOE_TEST_SWITCH", "0"));
        std::env::set_var("WDMOE_TEST_SWITCH", "1");
        assert!(switch("WDMOE_TEST_SWITCH", "0"));
        // A typo keeps the default (and is reported).
        std::env::set_var("WDMOE_TEST_SWITCH", "O");
        assert!(switch("WDMOE_TEST_SWITCH", "0"));
        std::env::set_var("WDMOE_TEST_SWITCH", "gemv");
        assert!(!switch("WDMOE_TEST_SWITCH", "gemv"));
        std::env::remove_var("WDMOE_TEST_SWITCH");
    }
}
