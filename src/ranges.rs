//! Half-open ranges of epoch milliseconds, `[start, end)`: what coverage, gaps and windows are
//! made of. Pure.

/// Merges overlapping or touching ranges, dropping empty ones; sorted.
pub fn union(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.retain(|(a, b)| a < b);
    ranges.sort();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The parts of `[start, end)` that `covered` does not cover, in order.
pub fn subtract(start: i64, end: i64, covered: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut cov: Vec<(i64, i64)> = covered
        .iter()
        .copied()
        .filter(|(a, b)| a < b && *b > start && *a < end)
        .collect();
    cov.sort();
    let mut out = Vec::new();
    let mut cursor = start;
    for (a, b) in cov {
        if a > cursor {
            out.push((cursor, a.min(end)));
        }
        cursor = cursor.max(b);
        if cursor >= end {
            break;
        }
    }
    if cursor < end {
        out.push((cursor, end));
    }
    out
}

/// The parts of `ranges` inside `[lo, hi)`.
pub fn intersect(ranges: &[(i64, i64)], lo: i64, hi: i64) -> Vec<(i64, i64)> {
    ranges
        .iter()
        .map(|(a, b)| ((*a).max(lo), (*b).min(hi)))
        .filter(|(a, b)| a < b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn union_merges_overlapping_and_touching_ranges() {
        assert_eq!(
            union(vec![(5, 7), (0, 2), (2, 3), (6, 9), (20, 20)]),
            vec![(0, 3), (5, 9)]
        );
    }
    #[test]
    fn subtract_leaves_exactly_the_uncovered_parts() {
        assert_eq!(subtract(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(
            subtract(0, 100, &[(10, 20), (15, 30), (50, 100)]),
            vec![(0, 10), (30, 50)]
        );
        assert_eq!(subtract(0, 100, &[(-5, 200)]), Vec::<(i64, i64)>::new());
        assert_eq!(subtract(10, 20, &[(0, 5), (25, 30)]), vec![(10, 20)]);
    }

    #[test]
    fn intersect_clips_to_the_bounds() {
        assert_eq!(
            intersect(&[(0, 10), (20, 30)], 5, 25),
            vec![(5, 10), (20, 25)]
        );
        assert!(intersect(&[(0, 10)], 10, 20).is_empty());
    }

    proptest! {
        #[test]
        fn a_point_is_in_the_union_iff_in_some_range_and_in_subtract_iff_uncovered(
            ranges in prop::collection::vec((0i64..100, 0i64..100), 0..8),
            p in 0i64..100,
        ) {
            let inside = |rs: &[(i64, i64)]| rs.iter().any(|(a, b)| *a <= p && p < *b);
            prop_assert_eq!(inside(&union(ranges.clone())), inside(&ranges));
            prop_assert_eq!(inside(&subtract(0, 100, &ranges)), !inside(&ranges));
        }
    }
}
