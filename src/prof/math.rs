//! The two functions of libm the sampler needs, written here so that the library does not
//! depend on libm: loading libm (its relocations and IFUNC resolvers) made about 350 KB of
//! its pages resident in every process, profiled or not. Accurate to about 1e-12 relative,
//! far beyond what sample weights need.

const LN2: f64 = core::f64::consts::LN_2;

/// Natural logarithm of a finite `x > 0`.
pub fn ln(x: f64) -> f64 {
    debug_assert!(x > 0.0 && x.is_finite());
    let bits = x.to_bits();
    // x = m * 2^e with m in [1, 2) (subnormals are scaled up first).
    let (bits, bias) = if bits >> 52 == 0 { ((x * (1u64 << 54) as f64).to_bits(), 54) } else { (bits, 0) };
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023 - bias;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    // Into [sqrt(1/2), sqrt(2)), where the series below converges fast.
    if m > core::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), with s = (m - 1) / (m + 1), |s| < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    for k in 0..12 {
        sum += term / (2 * k + 1) as f64;
        term *= s2;
    }
    2.0 * sum + e as f64 * LN2
}

/// e^x - 1 for `x <= 0`, without the cancellation of `exp(x) - 1` near 0.
pub fn exp_m1(x: f64) -> f64 {
    debug_assert!(x <= 0.0);
    if x < -745.0 {
        return -1.0;
    }
    if x > -0.5 {
        // The series sum x^n / n!, n >= 1: terms fall by at least half each step.
        let (mut term, mut sum) = (x, 0.0);
        for n in 2..20 {
            sum += term;
            term *= x / n as f64;
        }
        return sum;
    }
    exp(x) - 1.0
}

/// e^x for `-745 <= x <= 0`: x = k ln 2 + r with |r| <= ln 2 / 2, e^r by its series.
fn exp(x: f64) -> f64 {
    let k = round(x / LN2);
    let r = x - k * LN2;
    let (mut term, mut sum) = (1.0, 0.0);
    for n in 1..18 {
        sum += term;
        term *= r / n as f64;
    }
    // 2^k, in two steps so that no factor underflows before the product does.
    let k = k as i64;
    let half = k / 2;
    sum * pow2(half) * pow2(k - half)
}

/// `x` rounded to the nearest integer, halves away from zero (`f64::round`, which needs std).
pub fn round(x: f64) -> f64 {
    // From 2^52 up every f64 is an integer (and NaN stays NaN).
    if x.is_nan() || x.abs() >= (1u64 << 52) as f64 {
        return x;
    }
    let t = x as i64 as f64; // toward zero, exact in this range
    let d = x - t; // x's fractional part, exact
    let r = if d >= 0.5 {
        t + 1.0
    } else if d <= -0.5 {
        t - 1.0
    } else {
        t
    };
    if r == 0.0 { x * 0.0 } else { r } // zero keeps x's sign, as std's does
}

/// 2^k for -1022 <= k <= 0 (0 below).
fn pow2(k: i64) -> f64 {
    if k < -1022 { 0.0 } else { f64::from_bits(((k + 1023) as u64) << 52) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn round_matches_std() {
        let mut cases = vec![0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 0.49999999999999994, 4503599627370495.5];
        cases.extend([1e300, -1e300, f64::INFINITY, f64::NEG_INFINITY, (1u64 << 52) as f64 + 1.0]);
        let mut x = 1e-3f64;
        while x < 1e18 {
            cases.extend([x, -x, x + 0.5, -x - 0.5]);
            x *= 1.37;
        }
        for x in cases {
            assert_eq!(round(x).to_bits(), x.round().to_bits(), "round({x})");
        }
        assert!(round(f64::NAN).is_nan());
    }

    #[test]
    fn ln_matches_std() {
        let mut x = 1e-300f64;
        while x < 1e300 {
            assert!(close(ln(x), x.ln(), 1e-12), "ln({x}) = {} against {}", ln(x), x.ln());
            x *= 1.37;
        }
        for x in [0.5 / (1u64 << 53) as f64, 1.0 - 1e-16, 1.0, 1.0 + 1e-9, 0.999, 2.0, 1e-310] {
            assert!((ln(x) - x.ln()).abs() <= 1e-12 * x.ln().abs().max(1e-9), "ln({x})");
        }
    }

    #[test]
    fn exp_m1_matches_std() {
        let mut x = -1e-12f64;
        while x > -800.0 {
            assert!(close(exp_m1(x), x.exp_m1(), 1e-12), "exp_m1({x}) = {} against {}", exp_m1(x), x.exp_m1());
            x *= 1.21;
        }
        assert_eq!(exp_m1(0.0), 0.0);
        assert_eq!(exp_m1(-1000.0), -1.0);
    }
}
