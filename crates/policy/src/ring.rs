//! A fixed-size ring of events that can live in shared memory: plain `Copy` data, no pointers.

use crate::event::{Event, EventKind};
use crate::fixed::FixedText;

/// Bytes kept of an event's detail; longer texts are cut at a character boundary, marked `…`.
pub const DETAIL_BYTES: usize = 640;

#[derive(Clone, Copy)]
struct Slot {
    at: i64,
    kind: u8,
    detail: FixedText<DETAIL_BYTES>,
}

const EMPTY: Slot = Slot {
    at: 0,
    kind: 0,
    detail: FixedText::empty(),
};

/// The most recent `N` events; older ones are overwritten.
#[derive(Clone, Copy)]
pub struct Ring<const N: usize> {
    /// How many events were ever pushed; the next one goes to `pushed % N`.
    pushed: u64,
    slots: [Slot; N],
}

impl<const N: usize> Ring<N> {
    pub const fn new() -> Self {
        Ring {
            pushed: 0,
            slots: [EMPTY; N],
        }
    }

    pub fn push(&mut self, event: &Event) {
        let slot = Slot {
            at: event.at,
            kind: event.kind as u8,
            detail: FixedText::new(&event.detail),
        };
        self.slots[(self.pushed % N as u64) as usize] = slot;
        self.pushed += 1;
    }

    /// Events from oldest to newest, each with its sequence number (1 for the first event ever
    /// pushed), which orders events that share a timestamp.
    pub fn events(&self) -> Vec<(u64, Event)> {
        let kept = self.pushed.min(N as u64);
        (self.pushed - kept..self.pushed)
            .map(|i| {
                let slot = &self.slots[(i % N as u64) as usize];
                let event = Event {
                    at: slot.at,
                    kind: EventKind::from_u8(slot.kind).expect("only valid kinds are stored"),
                    detail: slot.detail.as_str().to_owned(),
                };
                (i + 1, event)
            })
            .collect()
    }
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: i64) -> Event {
        Event::new(i, EventKind::CheckFailed, format!("event {i}"))
    }

    #[test]
    fn keeps_the_most_recent_in_order() {
        let mut ring = Ring::<4>::new();
        assert!(ring.events().is_empty());
        for i in 0..3 {
            ring.push(&ev(i));
        }
        assert_eq!(
            ring.events(),
            (0..3).map(|i| (i as u64 + 1, ev(i))).collect::<Vec<_>>()
        );
        for i in 3..10 {
            ring.push(&ev(i));
        }
        assert_eq!(
            ring.events(),
            (6..10).map(|i| (i as u64 + 1, ev(i))).collect::<Vec<_>>()
        );
    }

    #[test]
    fn long_details_are_cut_at_a_char_boundary() {
        let mut ring = Ring::<2>::new();
        let long = "é".repeat(DETAIL_BYTES);
        ring.push(&Event::new(1, EventKind::Refused, long.clone()));
        let got = &ring.events()[0].1.detail;
        assert!(got.len() <= DETAIL_BYTES);
        assert!(got.ends_with('…'));
        assert!(long.starts_with(got.trim_end_matches('…')));
    }
}
