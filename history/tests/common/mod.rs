//! What the engine's tests write into pages and read back, shared by the test files that
//! use the same page contents (`mod common;`).

use rewind_history::PAGE_SIZE;

/// What one page write puts in the page: its page number plus one (so no written page is
/// all zeros), then a version byte repeated.
pub fn page_data(l: u64, v: u8) -> Vec<u8> {
    let mut d = vec![v; PAGE_SIZE as usize];
    d[..8].copy_from_slice(&(l + 1).to_le_bytes());
    d
}

/// What a page read back holds, checking it is whole and belongs to `l`; `None` for zeros.
pub fn decode(l: u64, buf: &[u8]) -> Option<u8> {
    if buf.iter().all(|b| *b == 0) {
        return None;
    }
    assert_eq!(
        buf[..8],
        (l + 1).to_le_bytes(),
        "page {l} holds another page's data"
    );
    let v = buf[8];
    assert!(buf[8..].iter().all(|b| *b == v), "page {l} is torn");
    Some(v)
}
