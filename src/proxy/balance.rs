//! Backend selection for the HTTP proxy: which backend gets the next request.
//! Pure: eligibility, load and randomness come in as closures, so the hot path
//! is lock-free and allocation-free, and every algorithm is testable with a
//! seeded RNG. Also the rise/fall hysteresis shared by health checks.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Upper bound on the expanded weight schedule, so a weight of 4e9 cannot make
/// us allocate gigabytes; larger totals are scaled down proportionally.
const MAX_SCHEDULE: u64 = 1 << 14;

/// The `balance` key of an `[[http]]` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx-style), the default.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests per unit of weight; ties rotate.
    LeastConn,
    /// Power of two choices: two weighted-random candidates, the lighter wins.
    P2c,
    /// Weighted random.
    Random,
}

impl Algorithm {
    /// The config spelling, used in logs and the status page.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::P2c => "p2c",
            Algorithm::Random => "random",
        }
    }
}

/// A `balance` value that names no algorithm; the message lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAlgorithm(pub String);

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown balance algorithm {:?} (expected round_robin, least_conn, p2c or random)", self.0)
    }
}

impl std::error::Error for UnknownAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" => Ok(Algorithm::RoundRobin),
            "least_conn" => Ok(Algorithm::LeastConn),
            "p2c" => Ok(Algorithm::P2c),
            "random" => Ok(Algorithm::Random),
            other => Err(UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// Picks a backend index per request. Built once per backend set (and swapped
/// whole with it), shared behind an `Arc`; the only mutable state is one cursor.
///
/// Weight 0 means "drained": the backend is never picked by any algorithm,
/// as in HAProxy, so an operator can take one out of rotation by config.
#[derive(Debug)]
pub struct Selector {
    algorithm: Algorithm,
    /// Weights after gcd reduction and scaling; 0 = drained.
    weights: Box<[usize]>,
    /// Smooth interleaving of backend indices, each appearing `weights[i]` times.
    schedule: Box<[usize]>,
    /// Round robin position, or the rotating start of the least_conn scan.
    cursor: AtomicUsize,
}

impl Selector {
    /// Expands the weights once so each pick is O(1) for round robin and random.
    /// Construction costs O(schedule × backends), paid at config load only.
    pub fn new(algorithm: Algorithm, weights: &[u32]) -> Selector {
        let weights = scale(weights);
        let schedule = smooth_schedule(&weights);
        Selector { algorithm, weights, schedule, cursor: AtomicUsize::new(0) }
    }

    /// Number of backends (drained ones included), so indices line up with the caller's set.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// True when built from no backends; every `select` then returns `None`.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Index of a backend with `eligible(i)` true (healthy and not excluded,
    /// e.g. by a retry), or `None` when there is none. `load(i)` is the in-flight
    /// count; `rand(n)` should be uniform in `0..n` (out-of-range values are
    /// reduced modulo `n`). Bounded work, never panics.
    pub fn select(
        &self,
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
        rand: &mut impl FnMut(usize) -> usize,
    ) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(&eligible),
            Algorithm::LeastConn => self.least_conn(&eligible, &load),
            Algorithm::Random => self.weighted_random(&eligible, rand),
            Algorithm::P2c => {
                let a = self.weighted_random(&eligible, rand)?;
                let b = self.weighted_random(&|i| i != a && eligible(i), rand);
                // Ties keep `a`, itself random, so equal loads do not favour anyone.
                Some(b.filter(|&b| self.lighter(b, load(b), a, load(a))).unwrap_or(a))
            }
        }
    }

    fn round_robin(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        let start = self.cursor.fetch_add(1, Relaxed) % len;
        for k in 0..len {
            let i = self.schedule[(start + k) % len];
            if eligible(i) {
                // Move the cursor past the skipped entries too; otherwise the
                // backend after a dead one would also get the dead one's share.
                if k > 0 {
                    self.cursor.fetch_add(k, Relaxed);
                }
                return Some(i);
            }
        }
        None
    }

    fn least_conn(&self, eligible: &impl Fn(usize) -> bool, load: &impl Fn(usize) -> u64) -> Option<usize> {
        let n = self.weights.len();
        // A rotating start makes equal loads rotate instead of always choosing index 0.
        let start = self.cursor.fetch_add(1, Relaxed) % n;
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if self.weights[i] == 0 || !eligible(i) {
                continue;
            }
            let l = load(i);
            if best.is_none_or(|(b, bl)| self.lighter(i, l, b, bl)) {
                best = Some((i, l));
            }
        }
        best.map(|(i, _)| i)
    }

    /// One O(1) draw from the schedule; if it lands on an ineligible backend,
    /// an exact draw over the eligible weights. The mixture is still exactly
    /// proportional: P(i) = w_i/W + (1 - W_e/W) * w_i/W_e = w_i/W_e.
    fn weighted_random(
        &self,
        eligible: &impl Fn(usize) -> bool,
        rand: &mut impl FnMut(usize) -> usize,
    ) -> Option<usize> {
        let len = self.schedule.len();
        let first = self.schedule[rand(len) % len];
        if eligible(first) {
            return Some(first);
        }
        let (w, n) = (&self.weights, self.weights.len());
        let live = |i: &usize| w[*i] > 0 && eligible(*i);
        let total: usize = (0..n).filter(live).map(|i| w[i]).sum();
        if total == 0 {
            return None;
        }
        let mut r = rand(total) % total;
        let mut last = None;
        for i in (0..n).filter(live) {
            last = Some(i);
            if r < w[i] {
                return Some(i);
            }
            r -= w[i];
        }
        // Only reached if eligibility changed between the two passes.
        last
    }

    /// Whether `a` carries less load per unit of weight than `b`; a heavier
    /// backend is expected to hold proportionally more in-flight requests.
    fn lighter(&self, a: usize, load_a: u64, b: usize, load_b: u64) -> bool {
        let (wa, wb) = (self.weights[a] as u128, self.weights[b] as u128);
        u128::from(load_a) * wb < u128::from(load_b) * wa
    }
}

/// Rise/fall hysteresis for one backend: one slow or failed check does not
/// eject it, one lucky check does not restore it. Fed by active checks and by
/// passive (request) outcomes alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive observations that disagree with the current state.
    streak: u32,
}

impl Hysteresis {
    /// `rise` successes to come back, `fall` failures to go down; 0 acts as 1.
    pub fn new(rise: u32, fall: u32, initially_healthy: bool) -> Self {
        Hysteresis { rise: rise.max(1), fall: fall.max(1), healthy: initially_healthy, streak: 0 }
    }

    /// Records one check result; `Some(new_state)` exactly when the state
    /// flips, so the caller logs and counts each transition once.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(ok)
    }

    /// Current state, as published in the backend's health flag.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Divides by the gcd (10,20 -> 1,2: a shorter schedule, same proportions),
/// then scales down so the total stays near `MAX_SCHEDULE`; non-zero stays >= 1.
fn scale(weights: &[u32]) -> Box<[usize]> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let total: u64 = weights.iter().map(|&w| u64::from(w) / g).sum();
    weights
        .iter()
        .map(|&w| {
            let w = u64::from(w) / g;
            let w = if total > MAX_SCHEDULE && w > 0 { (w * MAX_SCHEDULE / total).max(1) } else { w };
            // Now w <= MAX_SCHEDULE, so the conversion cannot fail on any real target.
            usize::try_from(w).unwrap_or(usize::MAX)
        })
        .collect()
}

/// nginx's smooth weighted round robin, run once: each step every backend
/// gains its weight, the highest is emitted and loses the total. 5,1,1 gives
/// a a b a c a a, so a heavy backend never gets its whole share in one burst.
fn smooth_schedule(weights: &[usize]) -> Box<[usize]> {
    let total: usize = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total);
    for _ in 0..total {
        // Scaled weights are <= MAX_SCHEDULE, so these i64 sums cannot overflow.
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += w as i64;
        }
        // Ties go to the lowest index, as in nginx; drained backends never run.
        let best =
            (0..weights.len()).filter(|&i| weights[i] > 0).reduce(|b, i| if current[i] > current[b] { i } else { b });
        if let Some(b) = best {
            current[b] -= total as i64;
            schedule.push(b);
        }
    }
    schedule.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Algorithm::*;

    const ALL: [Algorithm; 4] = [RoundRobin, LeastConn, P2c, Random];
    const N: usize = 100_000;
    fn all(_: usize) -> bool {
        true
    }
    fn idle(_: usize) -> u64 {
        0
    }

    /// Pick counts per backend over `picks` selections, seeded so runs repeat.
    fn counts(
        sel: &Selector,
        picks: usize,
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
    ) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut c = vec![0; sel.len()];
        for _ in 0..picks {
            let i = sel.select(&eligible, &load, &mut |n| rng.usize(..n));
            c[i.unwrap()] += 1;
        }
        c
    }

    /// Each count within ±3 % of its share of the total.
    fn assert_shares(c: &[usize], shares: &[u32]) {
        let (picks, total) = (c.iter().sum::<usize>(), shares.iter().sum::<u32>());
        for (&got, &s) in c.iter().zip(shares) {
            let want = picks as f64 * f64::from(s) / f64::from(total);
            assert!((got as f64 - want).abs() <= 0.03 * want, "{c:?} vs {shares:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for a in ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        let err = "leastconn".parse::<Algorithm>().unwrap_err().to_string();
        assert!(err.contains("leastconn") && err.contains("least_conn"), "{err}");
    }

    #[test]
    fn round_robin_exact_proportions() {
        let c = counts(&Selector::new(RoundRobin, &[1, 1, 1]), 99_999, all, idle);
        assert_eq!(c, [33_333; 3]);
        let c = counts(&Selector::new(RoundRobin, &[5, 1, 1]), 70_000, all, idle);
        assert_eq!(c, [50_000, 10_000, 10_000]);
    }

    #[test]
    fn round_robin_is_smooth() {
        let sel = Selector::new(RoundRobin, &[5, 1, 1]);
        let seq: Vec<usize> = (0..70).filter_map(|_| sel.select(all, idle, &mut |_| 0)).collect();
        assert_eq!(seq[..7], [0, 0, 1, 0, 2, 0, 0]);
        // Any period-long window holds the exact shares, and even across the
        // period boundary the heavy backend never gets its weight in one burst.
        for w in seq.windows(7) {
            assert_eq!(w.iter().filter(|&&i| i == 0).count(), 5);
        }
        assert_eq!(seq.chunk_by(|a, b| a == b).map(<[_]>::len).max(), Some(4));
    }

    #[test]
    fn round_robin_skip_does_not_double_the_next_backend() {
        let sel = Selector::new(RoundRobin, &[1, 1, 1]);
        assert_eq!(counts(&sel, 10_000, |i| i != 1, idle), [5_000, 0, 5_000]);
    }

    #[test]
    fn random_and_p2c_follow_weights() {
        for (a, w) in [Random, P2c].into_iter().flat_map(|a| [(a, [1, 1, 1]), (a, [5, 1, 1])]) {
            assert_shares(&counts(&Selector::new(a, &w), N, all, idle), &w);
        }
        // The fallback draw keeps the proportions when a backend is down.
        let c = counts(&Selector::new(Random, &[2, 1, 1]), N, |i| i != 1, idle);
        assert_shares(&c, &[2, 0, 1]);
    }

    #[test]
    fn p2c_and_least_conn_prefer_the_lighter() {
        let busy = |i| if i == 0 { 10 } else { 0 };
        let c = counts(&Selector::new(P2c, &[1, 1, 1]), N, all, busy);
        assert!(c[0] < N / 20, "{c:?}");
        let lc = Selector::new(LeastConn, &[1, 1, 1]);
        assert_eq!(counts(&lc, N, all, busy)[0], 0);
        assert_eq!(counts(&lc, 100, all, |i| [5, 2, 7][i]), [0, 100, 0]);
        // Load per unit of weight: 6 in flight on weight 4 is lighter than 2 on weight 1.
        assert_eq!(counts(&Selector::new(LeastConn, &[4, 1]), 100, all, |i| [6, 2][i]), [100, 0]);
    }

    #[test]
    fn least_conn_ties_rotate() {
        let sel = Selector::new(LeastConn, &[1, 1, 1]);
        let first: Vec<_> = (0..3).map(|_| sel.select(all, idle, &mut |_| 0)).collect();
        assert_eq!(first, [Some(0), Some(1), Some(2)]);
        assert_eq!(counts(&sel, 30_000, all, idle), [10_000; 3]);
    }

    #[test]
    fn ineligible_and_drained_are_never_picked() {
        for a in ALL {
            for weights in [[1, 1, 1], [5, 1, 1], [1, 5, 1]] {
                let c = counts(&Selector::new(a, &weights), 10_000, |i| i != 1, idle);
                assert!(c[1] == 0 && c[0] > 0 && c[2] > 0, "{a:?}: {c:?}");
            }
            let c = counts(&Selector::new(a, &[1, 0, 1]), 10_000, all, idle);
            assert!(c[1] == 0 && c[0] > 0 && c[2] > 0, "{a:?}: {c:?}");
        }
    }

    #[test]
    fn nothing_to_pick_is_none() {
        for a in ALL {
            let r = &mut |_| 0;
            assert_eq!(Selector::new(a, &[1, 2]).select(|_| false, idle, r), None);
            assert_eq!(Selector::new(a, &[]).select(all, idle, r), None);
            assert_eq!(Selector::new(a, &[0, 0]).select(all, idle, r), None);
            assert_eq!(Selector::new(a, &[0, 1]).select(|i| i == 0, idle, r), None);
        }
    }

    #[test]
    fn retry_excludes_the_backend_that_failed() {
        let mut rng = fastrand::Rng::with_seed(7);
        for a in ALL {
            let sel = Selector::new(a, &[1, 3]);
            for _ in 0..1000 {
                let first = sel.select(all, idle, &mut |n| rng.usize(..n)).unwrap();
                let retry = sel.select(|i| i != first, idle, &mut |n| rng.usize(..n));
                assert_eq!(retry, Some(1 - first), "{a:?}");
            }
        }
    }

    #[test]
    fn weights_are_reduced_and_capped() {
        assert_eq!(Selector::new(RoundRobin, &[10, 10, 20]).schedule.len(), 4);
        let sel = Selector::new(RoundRobin, &[u32::MAX, u32::MAX / 2, 1]);
        assert!(sel.schedule.len() <= MAX_SCHEDULE as usize + 3);
        assert_eq!(sel.weights[0] / sel.weights[1], 2);
        assert_eq!(sel.weights[2], 1);
    }

    #[test]
    fn out_of_range_rand_is_reduced() {
        for a in ALL {
            let sel = Selector::new(a, &[1, 2, 3]);
            for _ in 0..10 {
                let pick = sel.select(|i| i != 0, idle, &mut |_| usize::MAX);
                assert!(matches!(pick, Some(1 | 2)), "{a:?}");
            }
        }
    }

    #[test]
    fn hysteresis_flips_once_after_rise_or_fall() {
        let mut h = Hysteresis::new(2, 3, true);
        // '+' a passing check, '-' a failing one.
        let got: Vec<_> = "--+----+++-".bytes().map(|b| h.observe(b == b'+')).collect();
        let (d, u) = (Some(false), Some(true));
        let n = None;
        assert_eq!(got, [n, n, n, n, n, d, n, n, u, n, n]);
        assert!(h.is_healthy());
        // A failure resets the success streak while down.
        let mut h = Hysteresis::new(2, 1, false);
        assert_eq!([true, false, true].map(|ok| h.observe(ok)), [None; 3]);
        assert!(!h.is_healthy());
        assert_eq!(h.observe(true), Some(true));
        // 0 acts as 1.
        let mut h = Hysteresis::new(0, 0, true);
        assert_eq!([h.observe(false), h.observe(true)], [Some(false), Some(true)]);
    }

    proptest! {
        #[test]
        fn select_returns_an_eligible_backend_or_none(
            alg in 0..4usize,
            weights in proptest::collection::vec(0..20u32, 0..8),
            mask: u8,
            loads: [u64; 8],
            rands in proptest::collection::vec(any::<usize>(), 1..8),
        ) {
            let sel = Selector::new(ALL[alg], &weights);
            let eligible = |i: usize| mask >> i & 1 == 1;
            let any_live = (0..weights.len()).any(|i| weights[i] > 0 && eligible(i));
            let mut k = 0;
            let mut rand = |_| { k += 1; rands[k % rands.len()] };
            for _ in 0..4 {
                match sel.select(eligible, |i| loads[i], &mut rand) {
                    Some(i) => prop_assert!(weights[i] > 0 && eligible(i)),
                    None => prop_assert!(!any_live),
                }
            }
        }
    }
}
