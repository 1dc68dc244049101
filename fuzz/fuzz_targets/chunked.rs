//! The chunked scanner and re-framer: no panic on any bytes, the same
//! verdict wherever the input is cut, and re-framed output that is itself
//! a clean chunked body carrying the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipd::proxy::codec::chunked::{ChunkedScanner, Piece, Rechunker};

fn data_of(body: &[u8]) -> Result<(Vec<u8>, usize, bool), ()> {
    let mut s = ChunkedScanner::default();
    let mut data = Vec::new();
    let used = s
        .scan(body, |p| {
            if let Piece::Data(d) = p {
                data.extend_from_slice(d);
            }
        })
        .map_err(|_| ())?;
    Ok((data, used, s.is_done()))
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, body)) = input.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    let whole = data_of(body);
    let mut r = Rechunker::default();
    let mut out = Vec::new();
    let split = r.reframe(&body[..cut], &mut out).and_then(|a| {
        if r.is_done() {
            Ok(a)
        } else {
            r.reframe(&body[cut..], &mut out).map(|b| a + b)
        }
    });
    match (whole, split) {
        (Ok((data, used, done)), Ok(used_split)) => {
            assert_eq!(used, used_split);
            assert_eq!(done, r.is_done());
            let (again, again_used, again_done) = data_of(&out).expect("re-framed body scans");
            assert_eq!(again, data);
            assert_eq!(again_used, out.len());
            assert_eq!(again_done, done);
        }
        (Err(()), Err(_)) => {}
        (whole, split) => panic!("cut at {cut} changed the verdict: {whole:?} vs {split:?}"),
    }
});
