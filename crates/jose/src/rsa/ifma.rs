//! Modular exponentiation by a public exponent with AVX-512 IFMA: numbers in radix 2^52, eight
//! limbs to a vector, multiplied by almost-Montgomery multiplication (Gueron and Krasnov).
//!
//! A number of `V` vectors has `L = 8V` limbs and `R = 2^(52L)`. With an odd modulus `n` and
//! `4n < R`, [`amm`] maps `a, b < 2n` to `a * b / R mod n`, again below `2n`, so results can
//! feed each other without a final subtraction; only the last step, the conversion out of the
//! Montgomery domain, is brought fully below `n`.

use core::arch::x86_64::{
    __m512i, _mm_extract_epi64, _mm256_extract_epi64, _mm512_add_epi64, _mm512_alignr_epi64, _mm512_castsi512_si128,
    _mm512_extracti64x4_epi64, _mm512_madd52hi_epu64, _mm512_madd52lo_epu64, _mm512_set_epi64, _mm512_set1_epi64,
    _mm512_setzero_si512,
};

/// The low 52 bits.
const MASK: u64 = (1 << 52) - 1;

/// Whether this CPU runs the code here.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512ifma")
}

/// An odd modulus of `V` vectors, with what its exponentiations need.
pub(super) struct Modulus<const V: usize> {
    /// `n`, in limbs.
    n: [[u64; 8]; V],
    /// `R^2 mod n`, which brings a number into the Montgomery domain.
    rr: [[u64; 8]; V],
    /// `-n^-1 mod 2^52`.
    k0: u64,
    /// The public exponent, at least 3.
    e: u64,
}

impl<const V: usize> Modulus<V> {
    /// `n` big-endian without leading zeros, odd, with `4n < R`; `e` at least 3. Callers
    /// check [`available`] first; a CPU without it makes this panic rather than ever run the
    /// instructions.
    pub(super) fn new(n: &[u8], e: u64) -> Self {
        assert!(available(), "AVX-512 IFMA is not available");
        let l = 8 * V;
        let mut nl = [[0u64; 8]; V];
        to_limbs(n, nl.as_flattened_mut());
        let n_flat = nl.as_flattened();
        // -n^-1 mod 2^64 by Newton's iteration (each step doubles the correct low bits).
        let n0 = n_flat[0];
        let mut inv = n0;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n0.wrapping_mul(inv)));
        }
        debug_assert_eq!(n0.wrapping_mul(inv), 1);
        // R^2 mod n, with R = 2^t. Doubling all the way, from 2^(bits-1) (below n) to
        // 2^(2t), took 2t - bits steps, each a pass over every limb: ~300 µs for a 4096-bit
        // key, paid for every new key, and the key of a DPoP proof is the client's choice.
        // Instead: write t = s * 2^k with s odd, double only up to 2^(t+s) mod n (the
        // Montgomery form of 2^s), then square k times in the Montgomery domain, each square
        // doubling the exponent: 2^(t+s) -> 2^(t+2s) -> ... -> 2^(t+t). For t = 52L that is
        // at most 52L + s - bits + 1 doublings (~130 for 4096 bits) and k <= 8 squares.
        let bits = n.len() * 8 - n[0].leading_zeros() as usize;
        let t = 52 * l;
        let k = t.trailing_zeros();
        let odd = t >> k;
        let mut x = [[0u64; 8]; V];
        {
            let x = x.as_flattened_mut();
            x[(bits - 1) / 52] = 1 << ((bits - 1) % 52);
            for _ in 0..(t + odd - (bits - 1)) {
                let mut carry = 0;
                for w in x.iter_mut() {
                    let t = (*w << 1) | carry;
                    carry = t >> 52;
                    *w = t & MASK;
                }
                if carry != 0 || x.iter().rev().ge(n_flat.iter().rev()) {
                    subtract(x, n_flat);
                }
            }
        }
        let mut m = Modulus { n: nl, rr: x, k0: inv.wrapping_neg() & MASK, e };
        // SAFETY: `available()` was asserted above, so the CPU has every feature
        // `squares_ifma` is compiled for.
        #[allow(unsafe_code)]
        let mut rr = unsafe { m.squares_ifma(&x, k) };
        // Almost-Montgomery results are below 2n: one subtraction at most brings R^2 below n.
        let rr_flat = rr.as_flattened_mut();
        if rr_flat.iter().rev().ge(m.n.as_flattened().iter().rev()) {
            subtract(rr_flat, m.n.as_flattened());
        }
        m.rr = rr;
        m
    }

    /// `R^2 mod n` (for tests against an independent implementation).
    #[cfg(test)]
    pub(super) fn rr(&self) -> &[[u64; 8]; V] {
        &self.rr
    }

    /// `x` squared `k` times in the Montgomery domain: for `x = 2^(t+s)` mod n, `2^(t+s*2^k)`
    /// mod n, below `2n`.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn squares_ifma(&self, x: &[[u64; 8]; V], k: u32) -> [[u64; 8]; V] {
        let m = Vectors::new(&self.n);
        let mut x = *x;
        for _ in 0..k {
            x = amm(&x, &x, &m, self.k0);
        }
        x
    }

    /// Whether `s^e mod n` equals `em`; both big-endian, no longer than the modulus, and
    /// `s < n` (the caller checks it).
    pub(super) fn matches(&self, s: &[u8], em: &[u8]) -> bool {
        let mut sl = [[0u64; 8]; V];
        to_limbs(s, sl.as_flattened_mut());
        let mut want = [[0u64; 8]; V];
        to_limbs(em, want.as_flattened_mut());
        self.pow(&sl) == want
    }

    /// `s^e mod n`, fully reduced, for `s < n`.
    pub(super) fn pow(&self, s: &[[u64; 8]; V]) -> [[u64; 8]; V] {
        // SAFETY: a `Modulus` exists only where `available()` held (`new` asserts it), so the CPU has
        // every feature `pow_ifma` is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            self.pow_ifma(s)
        }
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn pow_ifma(&self, s: &[[u64; 8]; V]) -> [[u64; 8]; V] {
        let m = Vectors::new(&self.n);
        let base = amm(s, &self.rr, &m, self.k0);
        let mut x = base;
        for i in (0..63 - self.e.leading_zeros()).rev() {
            x = amm(&x, &x, &m, self.k0);
            if (self.e >> i) & 1 == 1 {
                x = amm(&x, &base, &m, self.k0);
            }
        }
        let mut one = [[0u64; 8]; V];
        one[0][0] = 1;
        // x * 1 / R is at most n, and n only where s^e = 0 mod n (s = 0 gives 0; a modulus
        // that is not square-free has other such s). `matches` compares with an encoding,
        // which is never 0 or n, so neither can pass.
        amm(&x, &one, &m, self.k0)
    }
}

/// Almost-Montgomery multiplication: `a * b / R mod n`, below `2n` for `a, b < 2n`; all in
/// 52-bit limbs.
///
/// Word by word (operand scanning): for each limb `b_i`, the accumulator takes `a * b_i` and
/// `y * n`, with `y` chosen to clear its lowest limb, and shifts down one limb. Two things keep
/// the vector unit busy rather than waiting:
///
/// - The products go to two accumulators, `q` for `a * b_i` (which does not depend on `y`) and
///   `p` for `y * n`, and each takes its high halves through a copy of its multiplicand moved
///   one limb up, so each step is two independent multiply-adds per vector, then the shift.
/// - `y` comes from scalar code: the lowest limb of `p` is tracked in a register (from the
///   limb above it, which the vector had before the previous `y` arrived, plus that `y`'s two
///   products that land there), so the next `y` never waits for a vector to be shifted and
///   read back. The carry out of the cleared limb stays in that register too, and joins the
///   result at the end.
///
/// Lanes are not normalised in between: each takes at most two 52-bit terms a step in each
/// accumulator, for at most `L` steps (below 2^61 together for `L = 80`), so a 64-bit lane never
/// overflows.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn amm<const V: usize>(a: &[[u64; 8]; V], b: &[[u64; 8]; V], m: &Vectors<V>, k0: u64) -> [[u64; 8]; V] {
    let a = Vectors::new(a);
    let zero = _mm512_setzero_si512();
    let (mut p, mut p_top) = ([zero; V], zero);
    let (mut q, mut q_top) = ([zero; V], zero);
    let (m0, m1) = (lane::<0>(m.v[0]), lane::<1>(m.v[0]));
    // The lowest limb of `p`, and the carry out of the limb last cleared.
    let (mut p0, mut carry) = (0u64, 0u64);
    for &bi in b.as_flattened() {
        let bv = _mm512_set1_epi64(bi as i64);
        for (q, (lo, hi)) in q.iter_mut().zip(a.v.iter().zip(&a.up)) {
            *q = _mm512_madd52hi_epu64(_mm512_madd52lo_epu64(*q, *lo, bv), *hi, bv);
        }
        q_top = _mm512_madd52hi_epu64(q_top, a.up_top, bv);
        let t = p0.wrapping_add(lane::<0>(q[0])).wrapping_add(carry);
        let y = t.wrapping_mul(k0) & MASK;
        // The cleared limb (t plus the low half of y * n0) leaves its carry...
        carry = (t + (m0.wrapping_mul(y) & MASK)) >> 52;
        // ...and the limb above it becomes the lowest: what `p` held there, plus the low half
        // of y * n1 and the high half of y * n0.
        p0 = lane::<1>(p[0]) + (m1.wrapping_mul(y) & MASK) + ((u128::from(m0) * u128::from(y)) >> 52) as u64;
        let yv = _mm512_set1_epi64(y as i64);
        for (p, (lo, hi)) in p.iter_mut().zip(m.v.iter().zip(&m.up)) {
            *p = _mm512_madd52hi_epu64(_mm512_madd52lo_epu64(*p, *lo, yv), *hi, yv);
        }
        p_top = _mm512_madd52hi_epu64(p_top, m.up_top, yv);
        for v in 0..V - 1 {
            p[v] = _mm512_alignr_epi64::<1>(p[v + 1], p[v]);
            q[v] = _mm512_alignr_epi64::<1>(q[v + 1], q[v]);
        }
        p[V - 1] = _mm512_alignr_epi64::<1>(p_top, p[V - 1]);
        q[V - 1] = _mm512_alignr_epi64::<1>(q_top, q[V - 1]);
        (p_top, q_top) = (zero, zero);
    }
    // The lowest lane of `p` was never read: its value is in `p0`'s place, and the vector's own
    // lane (the same limb, without the carries) is what the sum below needs.
    let mut out = [[0u64; 8]; V];
    for v in 0..V {
        out[v] = store(_mm512_add_epi64(p[v], q[v]));
    }
    for w in out.as_flattened_mut() {
        let t = *w + carry;
        *w = t & MASK;
        carry = t >> 52;
    }
    debug_assert_eq!(carry, 0, "a result below 2n < R has no carry out");
    out
}

/// A number's vectors, and the same moved one limb up (the top limb alone in `up_top`).
struct Vectors<const V: usize> {
    v: [__m512i; V],
    up: [__m512i; V],
    up_top: __m512i,
}

impl<const V: usize> Vectors<V> {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(x: &[[u64; 8]; V]) -> Self {
        let v: [__m512i; V] = core::array::from_fn(|i| load(&x[i]));
        let zero = _mm512_setzero_si512();
        let up = core::array::from_fn(|i| _mm512_alignr_epi64::<7>(v[i], if i == 0 { zero } else { v[i - 1] }));
        Vectors { v, up, up_top: _mm512_alignr_epi64::<7>(zero, v[V - 1]) }
    }
}

/// Lane `I` (0 or 1) of a vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn lane<const I: i32>(x: __m512i) -> u64 {
    _mm_extract_epi64::<I>(_mm512_castsi512_si128(x)) as u64
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load(a: &[u64; 8]) -> __m512i {
    _mm512_set_epi64(
        a[7] as i64,
        a[6] as i64,
        a[5] as i64,
        a[4] as i64,
        a[3] as i64,
        a[2] as i64,
        a[1] as i64,
        a[0] as i64,
    )
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store(v: __m512i) -> [u64; 8] {
    let lo = _mm512_extracti64x4_epi64::<0>(v);
    let hi = _mm512_extracti64x4_epi64::<1>(v);
    [
        _mm256_extract_epi64::<0>(lo) as u64,
        _mm256_extract_epi64::<1>(lo) as u64,
        _mm256_extract_epi64::<2>(lo) as u64,
        _mm256_extract_epi64::<3>(lo) as u64,
        _mm256_extract_epi64::<0>(hi) as u64,
        _mm256_extract_epi64::<1>(hi) as u64,
        _mm256_extract_epi64::<2>(hi) as u64,
        _mm256_extract_epi64::<3>(hi) as u64,
    ]
}

/// Limbs (radix 2^52, least significant first) of a big-endian number that fits in them.
pub(super) fn to_limbs(be: &[u8], out: &mut [u64]) {
    out.fill(0);
    for (i, &byte) in be.iter().rev().enumerate() {
        let (j, shift) = (i * 8 / 52, i * 8 % 52);
        out[j] |= (u64::from(byte) << shift) & MASK;
        if shift > 44 {
            out[j + 1] |= u64::from(byte) >> (52 - shift);
        }
    }
}

fn subtract(a: &mut [u64], b: &[u64]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let t = x.wrapping_sub(*y).wrapping_sub(borrow);
        borrow = t >> 63;
        *x = t & MASK;
    }
}
