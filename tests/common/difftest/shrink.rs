//! Shrinking a diverging case to a short reproducer: delta debugging (ddmin) over the
//! steps, then over the layer lines, then simplifications (a step run as root instead of
//! another user, a layer line without its xattrs, owner, mode or time), repeated until
//! nothing more goes or the time is up. Each try runs both sides afresh; a try counts
//! only when it diverges in the same way (same signature) as the original.

use std::time::Instant;

use super::layers::Entry;
use super::{run_case, Case, Divergence};

/// The smallest case found that still diverges as `div` does.
pub fn shrink(case: &Case, div: &Divergence, deadline: Instant) -> Case {
    let sig = div.sig.clone();
    let mut tries = 0usize;
    let mut still = |c: &Case| {
        tries += 1;
        run_case(c, super::lenient())
            .1
            .is_some_and(|d| d.sig == sig)
    };
    let mut c = case.clone();
    if let Some(i) = div.step {
        c.steps.truncate(i + 1); // later steps never ran
    }
    loop {
        let before = (c.layers.len(), c.steps.len());
        let layers = c.layers.clone();
        c.steps = ddmin(
            c.steps.clone(),
            |s| {
                still(&Case {
                    layers: layers.clone(),
                    steps: s.to_vec(),
                })
            },
            deadline,
        );
        let steps = c.steps.clone();
        c.layers = ddmin(
            c.layers.clone(),
            |l| {
                still(&Case {
                    layers: l.to_vec(),
                    steps: steps.clone(),
                })
            },
            deadline,
        );
        simplify(&mut c, &mut still, deadline);
        if (c.layers.len(), c.steps.len()) == before || Instant::now() > deadline {
            break;
        }
    }
    eprintln!("difftest: shrinking took {tries} runs");
    c
}

/// Drops what is not needed from single steps and layer lines.
fn simplify(c: &mut Case, still: &mut impl FnMut(&Case) -> bool, deadline: Instant) {
    for i in 0..c.steps.len() {
        if c.steps[i].user.is_some() && Instant::now() < deadline {
            let mut t = c.clone();
            t.steps[i].user = None;
            if still(&t) {
                *c = t;
            }
        }
    }
    type Edit = fn(&mut Entry) -> bool;
    let edits: [Edit; 4] = [
        |e| !std::mem::take(&mut e.xattrs).is_empty(),
        |e| e.owner.take().is_some(),
        |e| e.mode.take().is_some(),
        |e| e.time.take().is_some(),
    ];
    for i in 0..c.layers.len() {
        for edit in edits {
            if Instant::now() > deadline {
                return;
            }
            let mut t = c.clone();
            if edit(&mut t.layers[i]) && still(&t) {
                *c = t;
            }
        }
    }
}

/// Zeller's ddmin: the smallest sublist found for which `test` holds (`test(items)` is
/// assumed to hold).
pub fn ddmin<T: Clone>(
    mut items: Vec<T>,
    mut test: impl FnMut(&[T]) -> bool,
    deadline: Instant,
) -> Vec<T> {
    let mut n = 2usize;
    while !items.is_empty() && Instant::now() < deadline {
        let chunk = items.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < items.len() {
            let end = (start + chunk).min(items.len());
            let mut cand = items[..start].to_vec();
            cand.extend_from_slice(&items[end..]);
            if test(&cand) {
                items = cand;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
            if Instant::now() > deadline {
                return items;
            }
            start = end;
        }
        if !reduced {
            if chunk == 1 {
                break;
            }
            n = (n * 2).min(items.len());
        }
    }
    items
}

/// A regression test replaying `case`, ready to paste into `tests/difftest.rs`.
pub fn reproducer(case: &Case, div: &Divergence, seed: Option<u64>) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "/// Found by {}: {}.\n#[test]\nfn regress_CHANGE_ME() {{\n    replay(\n        &[\n",
        seed.map_or("the differential test".to_string(), |x| format!("seed {x}")),
        div.sig
    ));
    for l in &case.layers {
        s.push_str(&format!("            {:?},\n", l.to_string()));
    }
    s.push_str("        ],\n        &[\n");
    for st in &case.steps {
        s.push_str(&format!("            {:?},\n", st.to_string()));
    }
    s.push_str("        ],\n    );\n}\n");
    s
}
