//! The worker's whole state machine behind one door: the shell feeds in an [`Input`] with what it
//! read of this server ([`Local`]), and gets back a [`Step`]: the next state, the actions to
//! carry out and the events to record. The standby's and the primary's machines (`standby`,
//! `primary`) answer in the same shape, [`Transition`].

use crate::classify::{classify, Outcome, Verdict};
use crate::event::{Event, EventKind};
use crate::leader::{Refusal, Renewal, Term};
use crate::leading::{self, Answers, Outcome as Election};
use crate::members::Member;
use crate::primary::{self, Answer, Fence};
use crate::settings::Settings;
use crate::standby::{self, needs_votes, Phase, Promotion, Votes};
use crate::time::Micros;

/// What the shell must carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask every witness whether it can reach the primary, then feed [`Input::Votes`].
    AskWitnesses,
    /// Stand for election in `term` (leadership): vote for this server, durably, by the rules
    /// every member follows, then ask every other member; feed [`Input::Election`]. `primary`:
    /// this server is a primary seeking to lead. A standby claims the timeline it would promote
    /// onto (`leader::claim`): above its newest timeline history, its state file's record and
    /// `known_timeline`, the highest that members' refusals named.
    Stand {
        term: Term,
        primary: bool,
        known_timeline: u32,
    },
    /// Ask every member, this server included, for the lease of `term`; feed [`Input::Leases`]
    /// with the time the requests left.
    RenewLease {
        term: Term,
    },
    /// Create these physical replication slots on this server where missing, reserving no WAL
    /// until a follower streams through one (a new leader, once promoted: a dead member's slot
    /// must not keep WAL); feed [`Input::Slots`].
    CreateSlots {
        names: Vec<String>,
    },
    /// Read the primary's history of `timeline` (its `<tli>.history` file) and this server's
    /// own history of `own_timeline`; feed [`Input::History`].
    ReadHistory {
        timeline: u32,
        own_timeline: u32,
    },
    /// Stream from `leader` from now on: set `primary_conninfo` (and the check's conninfo) to
    /// `conninfo` as ALTER SYSTEM does, and reload; feed [`Input::Followed`].
    Follow {
        leader: String,
        conninfo: String,
        /// `primary_slot_name` too, where members use slots: created on the leader first where
        /// missing, so the WAL receiver finds it whether or not the leader made it yet.
        slot: Option<String>,
    },
    /// Start the promotion sequence: run the pre-promote command, if any, and feed back
    /// [`Promotion::Ready`] or [`Promotion::PreCommandFailed`]. Each step's result comes back as
    /// an [`Input::Promotion`] and the policy names the next step.
    Promote,
    /// Ask the postmaster to end recovery; feed back `Requested` or `SignalFailed`. `timeline`:
    /// the timeline this server claimed when it was elected: first make PostgreSQL pick it (a
    /// placeholder history file for each lower number it has none of), and fail rather than
    /// signal if this server has that timeline's history already.
    SignalPromotion {
        timeline: Option<u32>,
    },
    /// Wait until recovery has ended; feed back `Writable` or `NotWritable`.
    AwaitWritable,
    /// Run the post-promote command, if any (the server is writable).
    PostPromoteCommand,
    /// Refuse a request (`pg_promoter_promote()`): the requester raises this reason.
    Reject(String),
    /// A WARNING for the log, rate-limited here.
    Warn(String),
    /// Refuse ordinary connections, end ordinary sessions, block ordinary commits (or shut down,
    /// as `fence_action` says); `permanent` also leaves the marker so a restart stays fenced.
    Fence {
        permanent: bool,
        reason: String,
    },
    /// Put back in force, without acting again, the permanent fence an earlier run left.
    RestoreFence(String),
    /// Remove the marker of a permanent fence that no longer applies.
    ForgetMarker,
    Unfence,
}

/// A machine's answer to one input: its next state, what to do, what to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition<S> {
    pub state: S,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

pub type Step = Transition<Node>;

/// What the shell read of this server for this input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Local {
    pub now: Micros,
    pub in_recovery: bool,
    /// `pg_promoter_pause()` is in force.
    pub paused: bool,
    /// When the connected WAL receiver last heard from the primary (WAL or keepalive), if ever.
    pub walrcv_last_msg: Option<Micros>,
    /// How far this standby has received WAL.
    pub receive_lsn: Option<u64>,
    /// The timeline new WAL is written on (a primary's).
    pub timeline: Option<u32>,
    /// When this server started, in Unix microseconds (how it recognises itself among members).
    pub started_unix_us: i64,
    /// `pg_promoter_promote()` promoted this server.
    pub promoted_by_request: bool,
    /// A promotion is being carried out elsewhere: by `pg_promoter_promote()` for the worker, by
    /// the worker for a request.
    pub promotion_under_way: bool,
    /// A promotion was signalled and its post-promote command has not run yet (shared memory).
    pub promotion_pending: bool,
    /// The lease clock (monotonic, counting suspended time): every lease is counted on it.
    pub lease_clock: Micros,
    /// This member's term, from its state file.
    pub term: Term,
    /// A random number, fresh for each input: spreads out candidates that tied.
    pub random: u32,
    /// This server streams through a replication slot (`primary_slot_name` is set): the
    /// members use slots.
    pub uses_slots: bool,
    /// This cluster's system identifier (`pg_control`).
    pub system_id: u64,
    /// The timeline this standby replays, and how far.
    pub replay_timeline: Option<u32>,
    pub replay_lsn: Option<u64>,
    /// The timeline of the WAL received last (`receive_lsn`'s).
    pub receive_timeline: Option<u32>,
}

/// One witness's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessAnswer {
    pub name: String,
    /// Whether it could not reach the primary either; `None` when it could not be asked.
    pub gone: Option<bool>,
    /// A sentence for the event.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The worker starts (`pid`); `marker` is the reason a permanent fence left, if any;
    /// `leads`, the term the state file says this server leads.
    Start {
        pid: i32,
        marker: Option<String>,
        leads: Option<Term>,
    },
    /// A primary's round is due (leadership): renew the lease, or stand to lead.
    Due,
    /// The members answered this server's candidacy in `term`, as `me`, claiming `claim` (a
    /// standby's timeline); `error` when it could not stand at all (its own vote refused, or
    /// `Refusal::Failed`).
    Election {
        me: String,
        term: Term,
        claim: Option<u32>,
        answers: Answers,
        error: Option<Refusal>,
    },
    /// What this member's state says of who leads (on a change): the leader it knows, the
    /// member's term (the one that leader leads), its own name, and whether its upstream
    /// (`primary_conninfo`) already is that leader.
    Leader {
        leader: Option<String>,
        term: Term,
        me: Option<String>,
        upstream_is_leader: bool,
    },
    /// The histories asked for, as read (or why the primary's of `timeline` could not be).
    History {
        timeline: u32,
        read: Result<crate::rewind::Histories, String>,
    },
    /// How creating the followers' slots went.
    Slots(Result<Vec<String>, String>),
    /// How re-pointing to a leader went: done (with a note on what went wrong on the way, such
    /// as its slot not made on the leader), or not.
    Followed {
        leader: String,
        result: Result<Option<String>, String>,
    },
    /// The members (this server included) answered a lease round of `term` sent at `sent_at`
    /// (the lease clock).
    Leases {
        term: Term,
        sent_at: Micros,
        answers: Answers,
    },
    /// The configuration was reloaded: the new snapshot.
    Reload(Settings),
    /// The primary's check ended (a standby).
    Checked(Outcome),
    /// Nothing new was observed: only the local facts may have changed (end of recovery, the
    /// WAL receiver's first message), or no check could run.
    Tick,
    /// The witnesses answered the question [`Action::AskWitnesses`] asked.
    Votes(Vec<WitnessAnswer>),
    /// A primary's round over its members ended.
    Round(Vec<Answer>),
    /// A step of the promotion sequence ended.
    Promotion(Promotion),
    /// `pg_promoter_promote(force)`.
    Manual { force: bool },
}

/// Everything the worker remembers between inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub settings: Settings,
    pub standby: standby::State,
    pub primary: primary::State,
    /// A failed check whose verdict waits for the witnesses' answers.
    pub pending: Option<Verdict>,
    /// Each witness's last answer, so a vote is recorded when it changes.
    pub last_votes: Vec<(String, Option<bool>)>,
    /// Leadership: the term led, the lease, when to stand again.
    pub leading: leading::State,
    /// The leader this standby re-pointed to (or is re-pointing to).
    pub following: Option<String>,
    /// The leader this member's state named at the last [`Input::Leader`] (`None` before one).
    pub leader_seen: Option<Option<String>>,
    /// The newest term whose leader this member's state ever named: a lease of an older term
    /// is an old leader's, not one to follow.
    pub leader_term: Term,
    /// The histories of the primary's timeline and this standby's, as last read.
    pub histories: Option<crate::rewind::Histories>,
    /// The primary's timeline and this standby's whose histories could not be read (recorded
    /// once; read again at each check only while the primary's is newer, which holds promotion).
    pub history_failed: Option<(u32, u32)>,
    /// The slots this winner creates for its followers once it is promoted.
    pub slots_after_promotion: Vec<String>,
    /// The last re-pointing failed: the next [`Input::Leader`] tries again.
    pub follow_retry: bool,
}

impl Node {
    /// `ever_reached` outlives a worker: a restarted worker still knows the primary was reached.
    pub fn new(settings: Settings, started_at: Micros, ever_reached: bool) -> Node {
        Node {
            settings,
            standby: standby::State::new(started_at, ever_reached),
            primary: primary::State::open(),
            pending: None,
            last_votes: Vec::new(),
            leading: leading::State::default(),
            following: None,
            leader_seen: None,
            leader_term: 0,
            histories: None,
            history_failed: None,
            slots_after_promotion: Vec::new(),
            follow_retry: false,
        }
    }
}

impl Node {
    /// What a previous worker knew of the primary's WAL position, and when it was seen.
    pub fn knowing(mut self, primary_lsn: Option<u64>, at: Option<Micros>) -> Node {
        self.standby.primary_lsn = primary_lsn;
        self.standby.primary_lsn_at = at;
        self
    }
}

/// The one transition function: every input, every role.
pub fn step(node: &Node, input: Input, local: &Local) -> Step {
    let mut next = node.clone();
    let mut events = Vec::new();
    let mut actions = Vec::new();
    let now = local.now;
    match input {
        Input::Start { pid, marker, leads } => {
            next.leading.leads = leads;
            let role = if local.in_recovery { "standby" } else { "primary" };
            let detail = format!(
                "worker started on a {role} (PID {pid}): {}",
                node.settings.describe()
            );
            events.push(Event::new(now, EventKind::Start, detail));
            if let Some(text) = marker {
                let (facts, reason) = primary::Marker::parse(&text);
                let stale = if local.in_recovery {
                    Some("this server is a standby now".to_string())
                } else {
                    facts.and_then(|m| m.stale(local.system_id, local.timeline))
                };
                match stale {
                    Some(why) => {
                        actions.push(Action::ForgetMarker);
                        let detail = format!(
                            "the permanent fence an earlier run left ({}) no longer applies, and is removed: {why}",
                            primary::MARKER
                        );
                        events.push(Event::new(now, EventKind::Unfenced, detail));
                    }
                    None => {
                        let t = primary::restore(&node.primary, &reason, now);
                        next.primary = t.state;
                        actions.extend(t.actions);
                        events.extend(t.events);
                    }
                }
            }
        }
        Input::Reload(settings) => {
            let changes = node.settings.changes(&settings);
            if settings.primary_conninfo != node.settings.primary_conninfo {
                // Another primary: its timeline history is read anew.
                next.histories = None;
                next.history_failed = None;
            }
            let detail = if changes.is_empty() {
                "configuration reloaded: no pg_promoter setting changed".to_string()
            } else {
                format!("configuration reloaded: {}", changes.join(", "))
            };
            events.push(Event::new(now, EventKind::Reload, detail));
            next.settings = settings;
        }
        Input::Checked(outcome) => {
            if let Outcome::Answered {
                in_recovery,
                lsn,
                timeline,
                fenced,
                ..
            } = outcome
            {
                next.standby.upstream_is_standby = in_recovery;
                next.standby.upstream_is_primary = !in_recovery;
                next.standby.upstream_fenced = fenced && !in_recovery;
                if lsn.is_some() {
                    next.standby.primary_lsn = lsn;
                    next.standby.primary_lsn_at = Some(now);
                }
                if local.in_recovery {
                    let primary_timeline = timeline.filter(|_| !in_recovery);
                    rejoin(
                        node,
                        &mut next,
                        primary_timeline,
                        true,
                        local,
                        &mut actions,
                        &mut events,
                    );
                }
            }
            let verdict = classify(&outcome);
            if local.in_recovery && needs_votes(&next.standby, &verdict, &node.settings) {
                // The count could complete: the witnesses speak before anything is decided.
                next.pending = Some(verdict);
                actions.push(Action::AskWitnesses);
            } else {
                next.pending = None;
                apply_standby(&mut next, Some(&verdict), None, local, &mut actions, &mut events);
            }
        }
        Input::Votes(answers) => {
            for a in &answers {
                let said = (a.name.clone(), a.gone);
                if !next.last_votes.contains(&said) {
                    next.last_votes.retain(|(name, _)| *name != a.name);
                    next.last_votes.push(said);
                    events.push(Event::new(
                        now,
                        EventKind::WitnessVote,
                        format!("witness {}: {}", a.name, a.detail),
                    ));
                }
            }
            let votes = tally(&answers);
            let verdict = next.pending.take();
            apply_standby(
                &mut next,
                verdict.as_ref(),
                Some(votes),
                local,
                &mut actions,
                &mut events,
            );
        }
        Input::Tick => {
            apply_standby(&mut next, None, None, local, &mut actions, &mut events);
        }
        Input::Round(answers) => {
            let me = primary::recognise(&answers, local.started_unix_us, node.primary.me.as_deref());
            let views = primary::views(&answers, me.as_deref());
            let mut state = node.primary.clone();
            state.me = me;
            let t = primary::round(
                &state,
                &views,
                local.timeline.unwrap_or(1),
                node.settings.keepalives_count,
                now,
            );
            next.primary = t.state;
            actions.extend(t.actions);
            events.extend(t.events);
        }
        Input::Due => {
            let t = due(node, local);
            next.leading = t.state;
            actions.extend(t.actions);
            events.extend(t.events);
        }
        Input::Election {
            me,
            term,
            claim,
            answers,
            error,
        } => election(
            &mut next,
            &me,
            (term, claim),
            &answers,
            error,
            local,
            &mut actions,
            &mut events,
        ),
        Input::Leases {
            term,
            sent_at,
            answers,
        } => leases(
            &mut next,
            term,
            sent_at,
            &answers,
            local,
            &mut actions,
            &mut events,
        ),
        Input::Leader {
            leader,
            term,
            me,
            upstream_is_leader,
        } => {
            // A standby follows a leader it learns of, or, when its upstream is down, the leader
            // it knows; not the one it knew at start while its upstream lives (a cascade stays).
            // A first leader (a new cluster's) is not a change: only another one is. An upstream
            // that answers as a primary and is not the leader is an old primary (fenced, or soon):
            // a standby started while it was the primary follows the leader instead.
            let changed = matches!(&node.leader_seen, Some(Some(seen)) if Some(seen) != leader.as_ref());
            let upstream_down = node.standby.failures >= node.settings.keepalives_count.max(1);
            let upstream_superseded = node.standby.upstream_is_primary;
            next.leader_seen = Some(leader.clone());
            if leader.is_some() {
                next.leader_term = node.leader_term.max(term);
            }
            next.follow_retry = false;
            let target = leader
                .filter(|l| Some(l) != me.as_ref())
                .and_then(|l| node.settings.peers.iter().find(|p| p.name == l));
            match target {
                Some(peer)
                    if local.in_recovery
                        && !upstream_is_leader
                        && (changed || upstream_down || upstream_superseded || node.follow_retry)
                        && node.following.as_ref() != Some(&peer.name)
                        && leading::active(&node.settings) =>
                {
                    follow(&mut next, peer, me.as_deref(), local, &mut actions);
                }
                _ => {}
            }
        }
        Input::History { timeline, read } => match read {
            Ok(histories) => {
                next.history_failed = None;
                next.standby.rewind_unknown = None;
                next.histories = Some(histories);
                rejoin(
                    node,
                    &mut next,
                    Some(timeline),
                    false,
                    local,
                    &mut actions,
                    &mut events,
                );
            }
            Err(why) => {
                // Read again at the next check, recorded once a timeline: the check's role may
                // lack the right to read it.
                let mine = local.replay_timeline.unwrap_or(0);
                let ahead = timeline > mine;
                if node.history_failed != Some((timeline, mine)) {
                    let held = if ahead {
                        ", and it does not promote until it is known"
                    } else {
                        ""
                    };
                    let detail = format!(
                        "could not read the primary's history of timeline {timeline}, so whether this standby \
                         needs pg_rewind is not known{held}: {why}"
                    );
                    events.push(Event::new(now, EventKind::Misconfigured, detail));
                }
                next.history_failed = Some((timeline, mine));
                // A primary on a newer timeline certainly forked: promoting without knowing
                // where could fork a third. On one timeline number a second is rare (two
                // hand promotions), and no history is needed to follow.
                next.standby.rewind_unknown = ahead.then_some(why);
            }
        },
        Input::Slots(result) => {
            let (kind, detail) = match result {
                Ok(names) => (
                    EventKind::Following,
                    format!("replication slots ready for the followers: {}", names.join(", ")),
                ),
                Err(why) => (
                    EventKind::FollowFailed,
                    format!("could not create the followers' replication slots: {why}"),
                ),
            };
            events.push(Event::new(now, kind, detail));
        }
        Input::Followed { leader, result } => {
            let (kind, detail) = match result {
                Ok(note) => (
                    EventKind::Following,
                    format!(
                        "following {leader}: primary_conninfo set to its entry in pg_promoter.peers, and reloaded{}",
                        note.map(|n| format!(" ({n})")).unwrap_or_default()
                    ),
                ),
                Err(why) => {
                    // Tried again at the next input.
                    next.following = None;
                    next.follow_retry = true;
                    (EventKind::FollowFailed, format!("could not re-point to {leader}: {why}"))
                }
            };
            events.push(Event::new(now, kind, detail));
        }
        Input::Promotion(Promotion::Ready)
            if leading::active(&node.settings)
                && !node.standby.manual
                && !node.leading.may_commit(local.lease_clock) =>
        {
            // The pre-promote command outlasted the lease won for this promotion: another
            // candidate may hold the next term by now. Stand again rather than fork a timeline.
            next.standby.phase = Phase::Refusing;
            next.leading.leads = None;
            let detail = "the lease ran out while pre_promote_command ran: promotion aborted, standing again";
            events.push(Event::new(now, EventKind::PromoteFailed, detail));
        }
        Input::Promotion(result) => {
            // The timeline claimed in the election won for this promotion; a manual promotion
            // claims none.
            let claim = node.leading.claimed.filter(|_| !node.standby.manual);
            let t = standby::promotion(&node.standby, &result, now, &node.settings, claim);
            next.standby = t.state;
            // Before the post-promote command, which may take long.
            if matches!(result, Promotion::Writable { .. }) && !node.slots_after_promotion.is_empty() {
                actions.push(Action::CreateSlots {
                    names: std::mem::take(&mut next.slots_after_promotion),
                });
            }
            actions.extend(t.actions);
            events.extend(t.events);
        }
        Input::Manual { force } => {
            let facts = standby_facts(node, local, None);
            let t = standby::manual(&node.standby, force, &facts, &node.settings);
            next.standby = t.state;
            actions.extend(t.actions);
            events.extend(t.events);
        }
    }
    Transition {
        state: next,
        actions,
        events,
    }
}

/// Whether this standby can follow the primary on `primary_timeline` (`None`: the checked
/// server is a standby, whose timeline says nothing of the primary's), judged at every check
/// from the histories once they are read for these two timelines; `ask`: read them if not.
fn rejoin(
    node: &Node,
    next: &mut Node,
    primary_timeline: Option<u32>,
    ask: bool,
    local: &Local,
    actions: &mut Vec<Action>,
    events: &mut Vec<Event>,
) {
    let (Some(t), Some(mine)) = (primary_timeline, local.replay_timeline) else {
        next.standby.needs_rewind = None;
        next.standby.rewind_unknown = None;
        return;
    };
    if t == 1 && mine == 1 {
        next.standby.needs_rewind = None;
        next.standby.rewind_unknown = None;
        return;
    }
    let read = next
        .histories
        .as_ref()
        .filter(|h| h.primary_timeline == t && h.timeline == mine);
    let Some(h) = read else {
        let given_up = t <= mine && node.history_failed == Some((t, mine));
        if ask && !given_up {
            actions.push(Action::ReadHistory {
                timeline: t,
                own_timeline: mine,
            });
            if t > mine && next.standby.rewind_unknown.is_none() {
                next.standby.rewind_unknown = Some("the primary's timeline history is being read".into());
            }
        }
        return;
    };
    // The furthest WAL this standby holds on its own timeline: replay may lag what was
    // received, and what was received on the primary's timeline is no divergence.
    let received = local.receive_lsn.filter(|_| local.receive_timeline == Some(mine));
    let position = received.max(local.replay_lsn).unwrap_or(0);
    let why = crate::rewind::diverged(h, position);
    if let (Some(why), None) = (&why, &node.standby.needs_rewind) {
        let detail = format!(
            "{why}: it cannot follow; rejoin it with: {}",
            crate::rewind::command(h)
        );
        events.push(Event::new(local.now, EventKind::NeedsRewind, detail));
    }
    next.standby.needs_rewind = why;
    next.standby.rewind_unknown = None;
}

fn apply_standby(
    node: &mut Node,
    verdict: Option<&Verdict>,
    votes: Option<Votes>,
    local: &Local,
    actions: &mut Vec<Action>,
    events: &mut Vec<Event>,
) {
    let facts = standby_facts(node, local, votes);
    let mut t = standby::decide(&node.standby, verdict, &facts, &node.settings);
    if leading::active(&node.settings) && t.actions.contains(&Action::Promote) {
        // With leadership, a standby that would promote stands for election first; it
        // promotes once elected and holding the lease (see `leases`).
        let term = node.leading.next_term(local.term);
        t.actions.retain(|a| *a != Action::Promote);
        t.actions.push(Action::Stand {
            term,
            primary: false,
            known_timeline: node.leading.seen_timeline,
        });
        t.state.phase = Phase::Electing;
        let detail = format!(
            "standing for election in term {term}: asking the other {} members",
            leading::members(&node.settings) - 1
        );
        t.events
            .push(Event::new(local.now, EventKind::ElectionStarted, detail));
    }
    node.standby = t.state;
    actions.extend(t.actions);
    events.extend(t.events);
}

/// A primary's round with leadership: renew the lease of the term it leads, or stand to lead.
fn due(node: &Node, local: &Local) -> Transition<leading::State> {
    let l = &node.leading;
    let mut actions = Vec::new();
    let mut events = Vec::new();
    let superseded = matches!(node.primary.fence, Fence::Superseded { .. });
    if !local.in_recovery && leading::active(&node.settings) && !superseded {
        if let Some(term) = l.leads {
            actions.push(Action::RenewLease { term });
        } else if l.wait_to_stand(local.lease_clock).is_none() {
            let term = l.next_term(local.term);
            actions.push(Action::Stand {
                term,
                primary: true,
                known_timeline: l.seen_timeline,
            });
            let detail = format!("this primary leads no term: standing for election in term {term}");
            events.push(Event::new(local.now, EventKind::ElectionStarted, detail));
        }
    }
    Transition {
        state: l.clone(),
        actions,
        events,
    }
}

#[allow(clippy::too_many_arguments)]
fn election(
    node: &mut Node,
    me: &str,
    (term, claim): (Term, Option<u32>),
    answers: &Answers,
    error: Option<Refusal>,
    local: &Local,
    actions: &mut Vec<Action>,
    events: &mut Vec<Event>,
) {
    let standing = local.in_recovery && node.standby.phase == Phase::Electing;
    if let Some(refusal) = error {
        let (_, state, _) = leading::elected(
            &node.leading,
            &node.settings,
            me,
            (term, None),
            &Vec::new(),
            (local.lease_clock, local.now, local.random),
        );
        node.leading = state;
        let detail = format!("could not stand in term {term}: {}", refusal.reason());
        events.push(Event::new(local.now, EventKind::ElectionLost, detail.clone()));
        if standing {
            node.standby.phase = Phase::Refusing;
        }
        if own_grant_outlasts_a_lease(node, me, &refusal, local) {
            let leader = refusal
                .lease_holder()
                .map(|(l, _)| l)
                .unwrap_or_default()
                .to_string();
            let why = format!(
                "this server's own member has renewed {leader}'s lease of a newer term past the end it first \
                 had: {leader} leads, and this primary leads no term"
            );
            supersede(node, &why, &leader, local, actions, events);
            return;
        }
        fence_without_lease(node, &detail, local, actions, events);
        return;
    }
    node.leading.own_grant_to = None;
    let (outcome, state, event) = leading::elected(
        &node.leading,
        &node.settings,
        me,
        (term, claim),
        answers,
        (local.lease_clock, local.now, local.random),
    );
    node.leading = state;
    let lost = event.detail.clone();
    events.push(event);
    match outcome {
        // The lease comes before anything else: a standby promotes only once it holds it, and
        // the lease runs from its request. The followers' slots wait for the promotion (each
        // follower also makes its own before it re-points).
        Election::Won => {
            node.slots_after_promotion = if local.uses_slots && local.in_recovery {
                leading::slots_for_followers(&node.settings, me)
            } else {
                Vec::new()
            };
            actions.push(Action::RenewLease { term });
        }
        Election::Superseded { term: newer, leader } => {
            if standing {
                node.standby.phase = Phase::Refusing;
            } else if !local.in_recovery {
                let why = format!("{leader} leads term {newer}, newer than this server's");
                supersede(node, &why, &leader, local, actions, events);
            }
        }
        Election::Lost | Election::Outranked => {
            if standing {
                node.standby.phase = Phase::Refusing;
                // Members refused for a live leader's lease: follow it now. This standby may
                // never learn it as a member, when its own candidacies took it past that
                // leader's term (it then refuses the leader's leases as stale). Not the leader
                // it knows already: that is the one whose lease outlives it (its upstream). Not
                // a lease of a term older than a leader it knew: an old primary back, whose own
                // member alone renewed it, and which may be fenced for good next.
                let known = node.leader_seen.clone().flatten();
                let holder = answers
                    .iter()
                    .filter_map(|(_, v)| v.as_ref().err()?.lease_holder())
                    .filter(|(_, term)| *term >= node.leader_term)
                    .map(|(l, _)| l)
                    .find(|l| *l != me && known.as_deref() != Some(*l))
                    .and_then(|l| node.settings.peers.iter().find(|p| p.name == l));
                if let Some(peer) = holder.filter(|p| node.following.as_ref() != Some(&p.name)) {
                    let peer = peer.clone();
                    follow(node, &peer, Some(me), local, actions);
                }
            }
            // A primary refused by a majority for the lease they hold to another leader was failed
            // over from, whatever term it stands in: its own candidacies may have taken it past
            // that leader's term, so no refusal names a newer one.
            let members = leading::members(&node.settings);
            let holders: Vec<&str> = answers
                .iter()
                .filter_map(|(_, v)| v.as_ref().err()?.lease_holder())
                .map(|(l, _)| l)
                .filter(|l| *l != me)
                .collect();
            let majority = holders
                .iter()
                .find(|l| 2 * holders.iter().filter(|h| h == l).count() > members);
            if let (Some(leader), false, false) = (majority, local.in_recovery, standing) {
                let why = format!("a majority of the members hold a lease to {leader}");
                let leader = leader.to_string();
                supersede(node, &why, &leader, local, actions, events);
                return;
            }
            fence_without_lease(node, &lost, local, actions, events);
        }
    }
}

/// Whether a primary that could not stand (`refusal`, its own vote's) has met its own member's
/// live grant to one other leader at every stand since, past the end that grant had when first
/// seen: that leader renewed it, so it is alive and elected (a lease is asked only by the winner
/// of its term), and this primary, which leads no term, was failed over from or promoted outside
/// an election. A leader that stopped is not mistaken for a live one: its grant runs out at that
/// end (a switchover by hand goes on once it has).
fn own_grant_outlasts_a_lease(node: &mut Node, me: &str, refusal: &Refusal, local: &Local) -> bool {
    let holder = match refusal {
        Refusal::LeaseHeld { leader, left, .. } if leader != me && !local.in_recovery => {
            Some((leader, *left))
        }
        _ => None,
    };
    let Some((holder, left)) = holder else {
        node.leading.own_grant_to = None;
        return false;
    };
    let ends = match &node.leading.own_grant_to {
        Some((l, at)) if l == holder => *at,
        _ => local.lease_clock.saturating_add(left),
    };
    node.leading.own_grant_to = Some((holder.clone(), ends));
    local.lease_clock > ends
}

/// Re-points this standby to `leader` (its own slot named after `me`, where members use slots).
fn follow(node: &mut Node, leader: &Member, me: Option<&str>, local: &Local, actions: &mut Vec<Action>) {
    node.following = Some(leader.name.clone());
    node.histories = None;
    node.history_failed = None;
    actions.push(Action::Follow {
        leader: leader.name.clone(),
        conninfo: leader.conninfo.clone(),
        slot: me.filter(|_| local.uses_slots).map(leading::slot_name),
    });
}

/// A primary that held a lease and holds none now (it lapsed, or a new one could not be won)
/// cannot take ordinary commits: it fences itself until a lease is renewed, so its clients hear
/// why at once.
fn fence_without_lease(
    node: &mut Node,
    why: &str,
    local: &Local,
    actions: &mut Vec<Action>,
    events: &mut Vec<Event>,
) {
    let l = &node.leading;
    if local.in_recovery || node.primary.fence != Fence::Open || !l.held || l.may_commit(local.lease_clock) {
        return;
    }
    let reason = format!("this primary holds no lease: {why}");
    events.push(Event::new(local.now, EventKind::Fenced, reason.clone()));
    actions.push(Action::Fence {
        permanent: false,
        reason,
    });
    node.primary.fence = Fence::Isolated;
}

fn leases(
    node: &mut Node,
    term: Term,
    sent_at: Micros,
    answers: &Answers,
    local: &Local,
    actions: &mut Vec<Action>,
    events: &mut Vec<Event>,
) {
    let r = leading::count_round(
        &node.leading,
        &node.settings,
        term,
        sent_at,
        answers,
        (local.lease_clock, local.now),
    );
    node.leading = r.state;
    events.extend(r.events);
    let electing = local.in_recovery && node.standby.phase == Phase::Electing;
    match r.renewal {
        Renewal::Renewed { .. } if electing => {
            // Elected and holding the lease (its event says so): promote.
            actions.push(Action::Promote);
            node.standby.phase = Phase::Promoting;
        }
        Renewal::Renewed { .. } => {
            if !local.in_recovery && node.primary.fence == Fence::Isolated {
                let detail = format!("lease of term {term} renewed: fence lifted");
                events.push(Event::new(local.now, EventKind::Unfenced, detail));
                actions.push(Action::Unfence);
                node.primary.fence = Fence::Open;
            }
        }
        Renewal::Short { .. } if electing => {
            node.leading.leads = None;
            node.standby.phase = Phase::Refusing;
        }
        Renewal::Short { .. } => {
            let why = format!(
                "no majority of the {} members renewed the lease of term {term}",
                leading::members(&node.settings)
            );
            fence_without_lease(node, &why, local, actions, events);
        }
        Renewal::Superseded { term: newer, leader } => {
            if electing {
                node.standby.phase = Phase::Refusing;
            } else if !local.in_recovery {
                let why = format!("{leader} leads term {newer}, newer than this server's");
                supersede(node, &why, &leader, local, actions, events);
            }
        }
    }
}

/// A member named a leader of a newer term: this primary was failed over from, for good.
fn supersede(
    node: &mut Node,
    why: &str,
    leader: &str,
    local: &Local,
    actions: &mut Vec<Action>,
    events: &mut Vec<Event>,
) {
    if matches!(node.primary.fence, Fence::Superseded { .. }) {
        return;
    }
    let reason =
        format!("{why}: this server was failed over from; rejoin it with pg_rewind or a new base backup");
    events.push(Event::new(local.now, EventKind::Fenced, reason.clone()));
    actions.push(Action::Fence {
        permanent: true,
        reason,
    });
    node.primary.fence = Fence::Superseded {
        by: leader.to_string(),
        timeline: 0,
    };
    node.leading.leads = None;
}

fn standby_facts(node: &Node, local: &Local, votes: Option<Votes>) -> standby::Facts {
    standby::Facts {
        now: local.now,
        in_recovery: local.in_recovery,
        paused: local.paused,
        walrcv_last_msg: local.walrcv_last_msg,
        primary_lsn: node.standby.primary_lsn,
        primary_lsn_at: node.standby.primary_lsn_at,
        receive_lsn: local.receive_lsn.max(local.replay_lsn),
        votes,
        promoted_by_request: local.promoted_by_request,
        promotion_under_way: local.promotion_under_way,
        promotion_pending: local.promotion_pending,
        stand_wait: node
            .leading
            .wait_to_stand(local.lease_clock)
            .filter(|_| leading::active(&node.settings)),
    }
}

/// The witnesses' answers, counted.
pub fn tally(answers: &[WitnessAnswer]) -> Votes {
    let count = |v: Option<bool>| answers.iter().filter(|a| a.gone == v).count();
    Votes {
        gone: count(Some(true)),
        alive: count(Some(false)),
        unreachable: count(None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::members::Member;
    use crate::primary::Fence;
    use crate::standby::Phase;
    use crate::time::{MS, SEC};

    const T0: Micros = 1_000 * SEC;

    fn settings() -> Settings {
        Settings {
            primary_conninfo: "host=p".into(),
            keep_alive: Duration::from_secs(1),
            keepalives_count: 3,
            check_timeout: Duration::from_secs(1),
            ..Settings::default()
        }
    }

    fn standby_at(now: Micros) -> Local {
        Local {
            now,
            in_recovery: true,
            ..Local::default()
        }
    }

    fn refused() -> Outcome {
        Outcome::ConnectFailed("Connection refused".into())
    }

    fn answered() -> Outcome {
        Outcome::Answered {
            in_recovery: false,
            lsn: Some(0x3000),
            timeline: Some(1),
            started: Some(7),
            fenced: false,
        }
    }

    /// A primary on timeline 1 that started at 99 µs after the epoch.
    fn primary_at(now: Micros) -> Local {
        Local {
            now,
            in_recovery: false,
            timeline: Some(1),
            started_unix_us: 99,
            ..Local::default()
        }
    }

    fn kinds(step: &Step) -> Vec<EventKind> {
        step.events.iter().map(|e| e.kind).collect()
    }

    /// Feeds inputs one second apart, as a standby would, and returns every step.
    fn run(node: Node, inputs: Vec<Input>) -> Vec<Step> {
        let mut node = node;
        let mut out = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let s = step(&node, input, &standby_at(T0 + i as i64 * SEC));
            node = s.state.clone();
            out.push(s);
        }
        out
    }

    /// The count completes (3 refused checks), then `then` follows.
    fn down_then(then: Vec<Input>) -> Vec<Input> {
        let mut inputs = vec![Input::Checked(refused()); 3];
        inputs.extend(then);
        inputs
    }

    fn reached() -> Node {
        let node = Node::new(settings(), T0 - SEC, false);
        step(&node, Input::Checked(answered()), &standby_at(T0 - SEC)).state
    }

    /// Three failed checks, one a second from `T0`, on a standby with these WAL positions.
    fn three_failures(node: Node, receive: Option<u64>, replay: Option<u64>) -> Vec<Step> {
        let mut steps: Vec<Step> = Vec::new();
        let mut node = node;
        for i in 0..3 {
            let local = Local {
                receive_lsn: receive,
                replay_lsn: replay,
                ..standby_at(T0 + i * SEC)
            };
            let s = step(&node, Input::Checked(refused()), &local);
            node = s.state.clone();
            steps.push(s);
        }
        steps
    }

    #[test]
    fn a_restarted_worker_keeps_the_primarys_position_and_the_data_loss_bound_holds() {
        // The previous worker saw the primary 10 GB ahead of this standby.
        let restarted = Node::new(settings(), T0, true).knowing(Some(10 << 30), Some(T0 - 5 * SEC));
        let steps = three_failures(restarted, Some(1 << 20), None);
        let last = steps.last().unwrap();
        assert_eq!(last.state.standby.phase, Phase::Refusing);
        assert_eq!(last.state.standby.refused_by, vec![standby::Guard::TooMuchLag]);
        // Reached before, position unknown: the bound cannot be checked, so no promotion.
        let unknown = three_failures(Node::new(settings(), T0, true), Some(1 << 20), None);
        let last = unknown.last().unwrap();
        assert_eq!(last.state.standby.refused_by, vec![standby::Guard::LagUnknown]);
        assert!(last
            .events
            .iter()
            .any(|e| e.detail.contains("WAL position is not known")));
        // With the bound off, an unknown position holds nothing back.
        let off = Settings {
            max_lag_bytes: None,
            ..settings()
        };
        let steps = three_failures(Node::new(off, T0, true), Some(1 << 20), None);
        assert!(steps.last().unwrap().actions.contains(&Action::Promote));
    }

    #[test]
    fn a_standby_fed_by_restore_command_counts_the_wal_it_replayed() {
        // No WAL receiver position: what was replayed is what this standby has.
        let steps = three_failures(reached(), None, Some(0x3000));
        let last = steps.last().unwrap();
        assert!(last.actions.contains(&Action::Promote), "{:?}", last.events);
        let decided = last.events.iter().find(|e| e.kind == EventKind::Decided).unwrap();
        assert!(
            decided
                .detail
                .contains("estimated data loss 0 bytes (the primary's position as of 3000 ms before)"),
            "{}",
            decided.detail
        );
    }

    #[test]
    fn the_primarys_position_is_remembered_from_its_answers() {
        let node = reached();
        assert_eq!(node.standby.primary_lsn, Some(0x3000));
        assert!(node.standby.ever_reached);
        let s = step(&node, Input::Checked(refused()), &standby_at(T0));
        assert_eq!(
            s.state.standby.primary_lsn,
            Some(0x3000),
            "kept while the primary is down"
        );
    }

    #[test]
    fn a_failed_promotion_signal_refuses_and_the_next_check_tries_again() {
        let steps = run(
            reached(),
            down_then(vec![
                Input::Promotion(Promotion::SignalFailed("could not send signal".into())),
                Input::Checked(refused()),
            ]),
        );
        assert_eq!(steps[2].actions, vec![Action::Promote]);
        assert_eq!(steps[2].state.standby.phase, Phase::Promoting);
        assert_eq!(steps[3].state.standby.phase, Phase::Refusing);
        assert_eq!(kinds(&steps[3]), vec![EventKind::PromoteFailed]);
        assert_eq!(steps[3].events[0].detail, "could not send signal");
        assert_eq!(steps[4].actions, vec![Action::Promote]);
    }

    #[test]
    fn recovery_that_does_not_end_is_a_failed_promotion() {
        let steps = run(
            reached(),
            down_then(vec![
                Input::Promotion(Promotion::Requested {
                    took: Duration::from_millis(2),
                }),
                Input::Promotion(Promotion::NotWritable {
                    waited: Duration::from_secs(60),
                }),
            ]),
        );
        assert_eq!(kinds(&steps[3]), vec![EventKind::PromoteRequested]);
        assert_eq!(steps[3].actions, vec![Action::AwaitWritable]);
        assert_eq!(steps[3].state.standby.phase, Phase::Promoting);
        assert!(steps[4].events[0]
            .detail
            .starts_with("recovery had not ended 60 s after the request"));
        assert_eq!(steps[4].state.standby.phase, Phase::Refusing);
    }

    #[test]
    fn a_failed_pre_promote_command_waits_before_the_next_attempt() {
        let mut s = settings();
        s.command_timeout = Duration::from_secs(5);
        let node = Node {
            settings: s,
            ..reached()
        };
        let mut inputs = down_then(vec![Input::Promotion(Promotion::PreCommandFailed)]);
        inputs.extend(vec![Input::Checked(refused()); 5]);
        let steps = run(node, inputs);
        assert_eq!(
            steps[3].events[0].detail,
            "pre_promote_command failed: promotion aborted, next attempt in 5000 ms"
        );
        assert_eq!(steps[3].state.standby.retry_at, Some(T0 + 3 * SEC + 5 * SEC));
        // Checks at T0+4..T0+7 s wait; the one at T0+8 s tries again.
        assert!(steps[4..8].iter().all(|s| s.actions.is_empty()));
        assert!(steps[4..8]
            .iter()
            .all(|s| s.state.standby.phase == Phase::Refusing));
        assert_eq!(steps[8].actions, vec![Action::Promote]);
    }

    #[test]
    fn a_successful_promotion_reports_its_durations_then_the_role_change() {
        let mut steps = run(
            reached(),
            down_then(vec![Input::Promotion(Promotion::Writable {
                waited: Duration::from_millis(26),
                total: Duration::from_millis(30),
                timeline: Some(2),
            })]),
        );
        let last = steps.pop().unwrap();
        assert_eq!(
            last.events[0].detail,
            "recovery ended 26 ms after the request; decision to writable 30 ms, onto timeline 2"
        );
        assert_eq!(last.actions, vec![Action::PostPromoteCommand]);
        // The role change is recorded at once, before the post-promote command runs.
        assert_eq!(kinds(&last), vec![EventKind::Promoted, EventKind::RoleChanged]);
        assert_eq!(last.state.standby.phase, Phase::Primary);
        let primary = Local {
            in_recovery: false,
            ..standby_at(T0 + 5 * SEC)
        };
        let after = step(&last.state, Input::Tick, &primary);
        assert!(after.events.is_empty(), "recorded once");
    }

    #[test]
    fn a_manual_promotion_takes_the_same_path_and_says_who_asked() {
        let fresh = Node::new(settings(), T0, false);
        let refused = step(&fresh, Input::Manual { force: false }, &standby_at(T0));
        match &refused.actions[..] {
            [Action::Reject(why)] => assert!(why.contains("has not been reached"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(kinds(&refused), vec![EventKind::Refused]);
        assert!(refused.events[0]
            .detail
            .contains("manual promotion refused: the primary has not been reached"));
        assert_eq!(refused.state.standby.phase, Phase::Starting);

        let forced = step(&fresh, Input::Manual { force: true }, &standby_at(T0));
        assert_eq!(forced.actions, vec![Action::Promote]);
        let ready = step(
            &forced.state,
            Input::Promotion(Promotion::Ready),
            &standby_at(T0 + 1),
        );
        assert_eq!(ready.actions, vec![Action::SignalPromotion { timeline: None }]);
        assert!(ready.events.is_empty());
        assert_eq!(forced.events[0].detail, "manual promotion requested (force)");
        let done = step(
            &forced.state,
            Input::Promotion(Promotion::Writable {
                waited: Duration::from_millis(20),
                total: Duration::from_millis(21),
                timeline: None,
            }),
            &standby_at(T0 + 1),
        );
        assert!(done.events[0].detail.ends_with("request to writable 21 ms"));
        assert_eq!(
            kinds(&done),
            vec![EventKind::Promoted],
            "the worker records the role change"
        );
        let busy = Local {
            promotion_under_way: true,
            ..standby_at(T0)
        };
        let second = step(&fresh, Input::Manual { force: true }, &busy);
        assert!(matches!(&second.actions[..], [Action::Reject(why)] if why.contains("already under way")));
        let failed = step(
            &forced.state,
            Input::Promotion(Promotion::PreCommandFailed),
            &standby_at(T0 + 1),
        );
        assert_eq!(
            failed.events[0].detail,
            "pre_promote_command failed: promotion aborted"
        );
        assert_eq!(
            failed.state.standby.retry_at, None,
            "no automatic retry for a request"
        );

        let primary = Local {
            in_recovery: false,
            ..standby_at(T0)
        };
        let not_standby = step(&reached(), Input::Manual { force: true }, &primary);
        assert!(matches!(not_standby.actions[..], [Action::Reject(_)]));
        assert!(not_standby.events[0].detail.contains("not in recovery"));
    }

    #[test]
    fn a_cascaded_standby_does_not_promote_when_its_upstream_standby_dies() {
        let upstream = Outcome::Answered {
            in_recovery: true,
            lsn: Some(0x5000),
            timeline: Some(1),
            started: Some(8),
            fenced: false,
        };
        let node = Node::new(settings(), T0 - SEC, false);
        let node = step(&node, Input::Checked(upstream), &standby_at(T0 - SEC)).state;
        assert!(node.standby.upstream_is_standby);
        let steps = run(node, vec![Input::Checked(refused()); 5]);
        assert!(steps.iter().all(|s| s.actions.is_empty()));
        assert_eq!(
            steps[2].state.standby.refused_by,
            vec![standby::Guard::UpstreamIsStandby]
        );
        assert!(steps[2].events[0].detail.contains("cascades from it"));
        // A later answer as a primary (the upstream was promoted) lifts it.
        let back = step(
            &steps[4].state,
            Input::Checked(answered()),
            &standby_at(T0 + 9 * SEC),
        );
        assert!(!back.state.standby.upstream_is_standby);
    }

    #[test]
    fn the_worker_does_not_promote_while_a_request_promotes() {
        let busy = |now| Local {
            promotion_under_way: true,
            ..standby_at(now)
        };
        let mut node = reached();
        for i in 0..3 {
            node = step(&node, Input::Checked(refused()), &busy(T0 + i * SEC)).state;
        }
        assert!(node
            .standby
            .refused_by
            .contains(&standby::Guard::PromotionUnderWay));
        let ended = Local {
            in_recovery: false,
            promoted_by_request: true,
            ..standby_at(T0 + 4 * SEC)
        };
        let s = step(&node, Input::Tick, &ended);
        assert_eq!(
            s.events[0].detail,
            "recovery has ended (pg_promoter_promote()): this server is now a primary"
        );
    }

    #[test]
    fn a_reload_mid_count_keeps_the_count_and_applies_the_new_one() {
        let mut inputs = vec![Input::Checked(refused()), Input::Checked(refused())];
        let longer = Settings {
            keepalives_count: 5,
            keep_alive: Duration::from_millis(500),
            ..settings()
        };
        inputs.push(Input::Reload(longer));
        inputs.extend(vec![Input::Checked(refused()); 3]);
        let steps = run(reached(), inputs);
        assert_eq!(kinds(&steps[2]), vec![EventKind::Reload]);
        assert_eq!(
            steps[2].events[0].detail,
            "configuration reloaded: keep_alive 1000 ms -> 500 ms, keepalives_count 3 -> 5"
        );
        assert_eq!(
            steps[2].state.standby.failures, 2,
            "a reload does not reset the count"
        );
        // Failures 3 and 4 of 5 suspect; the fifth decides.
        assert!(steps[3..5].iter().all(|s| s.actions.is_empty()));
        assert_eq!(steps[4].state.standby.phase, Phase::Suspecting);
        assert_eq!(steps[5].actions, vec![Action::Promote]);
    }

    #[test]
    fn witnesses_are_asked_before_the_count_completes_and_their_answers_decide() {
        let witness = |n: &str| Member {
            name: n.into(),
            conninfo: format!("host={n}"),
        };
        let node = Node {
            settings: Settings {
                witnesses: vec![witness("w1")],
                ..settings()
            },
            ..reached()
        };
        let gone = |gone| {
            Input::Votes(vec![WitnessAnswer {
                name: "w1".into(),
                gone,
                detail: "says so".into(),
            }])
        };
        let steps = run(
            node,
            vec![
                Input::Checked(refused()),
                Input::Checked(refused()),
                Input::Checked(refused()),
                gone(Some(false)),
                Input::Checked(refused()),
                gone(Some(true)),
            ],
        );
        assert!(steps[1].actions.is_empty(), "not before the count could complete");
        assert_eq!(steps[2].actions, vec![Action::AskWitnesses]);
        assert_eq!(steps[2].state.standby.failures, 2, "counted with the answers");
        assert_eq!(kinds(&steps[3]), vec![EventKind::WitnessVote, EventKind::Refused]);
        assert!(steps[3].events[1].detail.contains("1 of 3 members"));
        assert_eq!(steps[4].actions, vec![Action::AskWitnesses]);
        assert_eq!(kinds(&steps[5]), vec![EventKind::WitnessVote, EventKind::Decided]);
        assert_eq!(steps[5].actions, vec![Action::Promote]);
        assert!(steps[5].events[1].detail.contains("2 of 3 members agree"));
    }

    #[test]
    fn a_primary_remembers_its_own_entry_when_its_check_of_itself_fails() {
        let primary = primary_at(T0);
        let answer = |name: &str, outcome| Answer {
            name: name.into(),
            peer: true,
            outcome,
        };
        let me = Outcome::Answered {
            in_recovery: false,
            lsn: None,
            timeline: Some(1),
            started: Some(99),
            fenced: false,
        };
        let lost = || Outcome::TimedOut { connecting: true };
        // Two nodes: the standby is down; the primary's check of itself answers, then times out.
        let node = Node::new(settings(), T0, true);
        let first = step(
            &node,
            Input::Round(vec![answer("p", me), answer("s", lost())]),
            &primary,
        );
        assert_eq!(first.state.primary.me.as_deref(), Some("p"));
        let mut node = first.state;
        for _ in 0..5 {
            let s = step(
                &node,
                Input::Round(vec![answer("p", lost()), answer("s", lost())]),
                &primary,
            );
            assert!(
                s.actions.is_empty(),
                "two nodes: never fenced for the other's loss"
            );
            node = s.state;
        }
        assert_eq!(node.primary.fence, Fence::Open);
    }

    #[test]
    fn a_primary_fences_from_its_rounds_and_restores_a_marker_at_start() {
        let primary = primary_at(T0);
        let node = Node::new(settings(), T0, true);
        let cut = ["s1", "w1"]
            .map(|name| Answer {
                name: name.into(),
                peer: name == "s1",
                outcome: Outcome::TimedOut { connecting: true },
            })
            .to_vec();
        let s = step(&node, Input::Round(cut), &primary);
        assert_eq!(s.state.primary.fence, Fence::Isolated);
        assert!(matches!(s.actions[..], [Action::Fence { permanent: false, .. }]));

        let start = step(
            &node,
            Input::Start {
                pid: 5,
                marker: Some("s1 is a primary on timeline 2".into()),
                leads: None,
            },
            &primary,
        );
        assert_eq!(kinds(&start), vec![EventKind::Start, EventKind::Fenced]);
        assert!(start.events[0]
            .detail
            .starts_with("worker started on a primary (PID 5): keep_alive 1000 ms"));
        assert!(matches!(start.actions[..], [Action::RestoreFence(_)]));
        // A standby removes a marker: it was rejoined.
        let standby = step(
            &node,
            Input::Start {
                pid: 5,
                marker: Some("old".into()),
                leads: None,
            },
            &standby_at(T0),
        );
        assert_eq!(standby.actions, vec![Action::ForgetMarker]);
        assert_eq!(kinds(&standby), vec![EventKind::Start, EventKind::Unfenced]);
        assert!(standby.events[1].detail.contains("this server is a standby now"));
    }

    #[test]
    fn a_fence_marker_applies_only_to_the_cluster_and_timeline_it_was_written_on() {
        let marker = primary::Marker {
            system_id: 7,
            timeline: 1,
            term: 3,
            reason: "s1 leads term 4, newer than this server's".into(),
        };
        let start = |local: &Local| {
            step(
                &reached(),
                Input::Start {
                    pid: 5,
                    marker: Some(marker.render()),
                    leads: None,
                },
                local,
            )
        };
        let on = |system_id: u64, timeline: u32| Local {
            in_recovery: false,
            system_id,
            timeline: Some(timeline),
            ..standby_at(T0)
        };
        let same = start(&on(7, 1));
        assert!(matches!(same.actions[..], [Action::RestoreFence(ref r)] if r.contains("s1 leads term 4")));
        // Promoted again since (a base backup of it, or it was rewound and later elected).
        let later = start(&on(7, 3));
        assert_eq!(later.actions, vec![Action::ForgetMarker]);
        assert!(later.events[1]
            .detail
            .contains("written on timeline 1, and this server writes on timeline 3"));
        let other = start(&on(8, 1));
        assert_eq!(other.actions, vec![Action::ForgetMarker]);
        assert!(other.events[1].detail.contains("another cluster"));
        // An older version's marker, reason only: it applies.
        let (facts, reason) = primary::Marker::parse("s1 is a primary on timeline 2\n");
        assert_eq!((facts, reason.as_str()), (None, "s1 is a primary on timeline 2"));
        assert_eq!(primary::Marker::parse(&marker.render()).0, Some(marker.clone()));
    }

    fn three_members() -> Settings {
        let m = |n: &str| Member {
            name: n.into(),
            conninfo: format!("host={n}"),
        };
        Settings {
            peers: vec![m("p"), m("s1"), m("s2")],
            ..settings()
        }
    }

    fn ok(names: &[&str]) -> Answers {
        names.iter().map(|n| (n.to_string(), Ok(()))).collect()
    }

    #[test]
    fn a_candidate_refused_for_a_live_leaders_lease_follows_that_leader() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let steps = run(node, down_then(vec![]));
        let lost = |refusal: crate::leader::Refusal| Input::Election {
            me: "s2".into(),
            term: 9,
            claim: None,
            answers: vec![
                (
                    "p".into(),
                    Err(crate::leader::Refusal::Unreachable("refused".into())),
                ),
                ("s1".into(), Err(refusal)),
            ],
            error: None,
        };
        let remote = |term| crate::leader::Refusal::Remote {
            code: "lease_held".into(),
            reason: "its lease to s1 holds for 300 ms more".into(),
            leader: Some("s1".into()),
            term,
        };
        let lost_to_s1 = step(&steps[2].state, lost(remote(5)), &standby_at(T0));
        assert_eq!(
            lost_to_s1.actions,
            vec![Action::Follow {
                leader: "s1".into(),
                conninfo: "host=s1".into(),
                slot: None
            }]
        );
        assert_eq!(lost_to_s1.state.following.as_deref(), Some("s1"));
        // The leader it knows already holds the lease: that is its dead upstream, not news.
        let mut knows_s1 = steps[2].state.clone();
        knows_s1.leader_seen = Some(Some("s1".into()));
        assert!(step(&knows_s1, lost(remote(5)), &standby_at(T0))
            .actions
            .is_empty());
        // A lease of a term older than a leader it knew: an old primary back, renewed by its own
        // member alone (the chaos of a CI run: the standby followed it, and stood no more).
        let knew_term_6 = step(
            &steps[2].state,
            Input::Leader {
                leader: Some("p".into()),
                term: 6,
                me: Some("s2".into()),
                upstream_is_leader: true,
            },
            &standby_at(T0),
        );
        assert_eq!(knew_term_6.state.leader_term, 6);
        let forgot = step(
            &knew_term_6.state,
            Input::Leader {
                leader: None,
                term: 9,
                me: Some("s2".into()),
                upstream_is_leader: false,
            },
            &standby_at(T0),
        );
        assert_eq!(forgot.state.leader_term, 6, "a term with no leader known");
        assert!(step(&forgot.state, lost(remote(5)), &standby_at(T0))
            .actions
            .is_empty());
        assert_eq!(
            step(&forgot.state, lost(remote(6)), &standby_at(T0))
                .state
                .following
                .as_deref(),
            Some("s1")
        );
        // Another refusal names no live leader: nothing to follow.
        let other = crate::leader::Refusal::Remote {
            code: "already_voted".into(),
            reason: "it voted for s1 in term 9".into(),
            leader: Some("s1".into()),
            term: 9,
        };
        assert!(step(&steps[2].state, lost(other), &standby_at(T0))
            .actions
            .is_empty());
    }

    #[test]
    fn with_leadership_a_standby_is_elected_then_leased_then_promotes() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let mut local = standby_at(T0);
        local.term = 1;
        // This member's state file says term 0: it stands in term 1.
        let steps = run(node, down_then(vec![]));
        let decided = &steps[2];
        assert_eq!(
            decided.actions,
            vec![Action::Stand {
                term: 1,
                primary: false,
                known_timeline: 0
            }]
        );
        assert_eq!(decided.state.standby.phase, Phase::Electing);
        assert_eq!(
            kinds(decided),
            vec![EventKind::Decided, EventKind::ElectionStarted]
        );

        local.lease_clock = 50 * SEC;
        let won = Input::Election {
            me: "s1".into(),
            term: 1,
            claim: Some(2),
            answers: ok(&["s2"]),
            error: None,
        };
        let elected = step(&decided.state, won, &local);
        assert_eq!(elected.actions, vec![Action::RenewLease { term: 1 }]);
        assert_eq!(
            elected.state.standby.phase,
            Phase::Electing,
            "no promotion before the lease"
        );
        let leased = Input::Leases {
            term: 1,
            sent_at: 50 * SEC,
            answers: ok(&["s1", "s2"]),
        };
        let promoting = step(&elected.state, leased, &local);
        assert_eq!(promoting.actions, vec![Action::Promote]);
        assert_eq!(promoting.state.standby.phase, Phase::Promoting);
        assert_eq!(promoting.state.leading.leads, Some(1));
        // The pre-promote command ends within the lease: on, onto the timeline it claimed. After
        // it: aborted.
        let ready = step(&promoting.state, Input::Promotion(Promotion::Ready), &local);
        assert_eq!(ready.actions, vec![Action::SignalPromotion { timeline: Some(2) }]);
        local.lease_clock += 2 * SEC;
        let late = step(&promoting.state, Input::Promotion(Promotion::Ready), &local);
        assert!(late.actions.is_empty());
        assert_eq!(late.state.standby.phase, Phase::Refusing);
        assert_eq!(kinds(&late), vec![EventKind::PromoteFailed]);
    }

    #[test]
    fn a_standby_streaming_from_a_fenced_primary_stands_with_leadership_only() {
        // The chaos run's seed 3047: a standby led the newer term while it still streamed from
        // the old leader, fenced by that term; its WAL receiver held the promotion back for good.
        let fenced = Outcome::Answered {
            in_recovery: false,
            lsn: Some(0x3000),
            timeline: Some(2),
            started: Some(7),
            fenced: true,
        };
        // Checks one a second, the WAL receiver hearing from the upstream before each.
        let streaming = |settings: Settings, outcomes: Vec<Outcome>| {
            let mut node = Node {
                settings,
                ..reached()
            };
            let mut last = None;
            for (i, outcome) in (0..).zip(outcomes) {
                let local = Local {
                    walrcv_last_msg: Some(T0 + i * SEC - 100 * MS),
                    ..standby_at(T0 + i * SEC)
                };
                let s = step(&node, Input::Checked(outcome), &local);
                node = s.state.clone();
                last = Some(s);
            }
            last.unwrap()
        };
        let stands = |step: &Step| {
            step.state.standby.phase == Phase::Electing && matches!(step.actions[..], [Action::Stand { .. }])
        };
        let held = |step: &Step| {
            step.state.standby.phase == Phase::Refusing
                && step
                    .events
                    .iter()
                    .any(|e| e.detail.contains("the WAL receiver heard"))
                && !step.actions.contains(&Action::Promote)
        };
        let timed_out = Outcome::TimedOut { connecting: true };
        assert!(stands(&streaming(three_members(), vec![fenced.clone(); 3])));
        // The last answer holds through checks that get none, as whether it came from a standby.
        let then_silent = vec![fenced.clone(), timed_out.clone(), timed_out.clone()];
        assert!(stands(&streaming(three_members(), then_silent)));
        // A primary that streams and last answered unfenced is alive, leadership or not.
        assert!(held(&streaming(three_members(), vec![timed_out.clone(); 3])));
        let unfenced = vec![
            fenced.clone(),
            answered(),
            timed_out.clone(),
            timed_out.clone(),
            timed_out,
        ];
        assert!(held(&streaming(three_members(), unfenced)));
        // Without leadership a fence may lift at the next check: a primary that streams is alive.
        assert!(held(&streaming(settings(), vec![fenced; 3])));
    }

    #[test]
    fn a_primary_that_answers_fenced_is_down_and_its_standby_stands() {
        // The chaos of a CI run: a standby cut off while the others failed over came back to an
        // old primary fenced for good, took it for alive, and never stood nor followed the leader.
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let fenced = Outcome::Answered {
            in_recovery: false,
            lsn: Some(0x3000),
            timeline: Some(1),
            started: Some(7),
            fenced: true,
        };
        let steps = run(node, vec![Input::Checked(fenced); 3]);
        assert_eq!(kinds(&steps[0]), vec![EventKind::CheckFailed]);
        assert!(steps[0].events[0].detail.contains("fenced"));
        assert_eq!(
            steps[2].actions,
            vec![Action::Stand {
                term: 1,
                primary: false,
                known_timeline: 0
            }]
        );
        // Unfenced, it is back.
        let back = step(
            &steps[1].state,
            Input::Checked(answered()),
            &standby_at(T0 + 2 * SEC),
        );
        assert_eq!(kinds(&back), vec![EventKind::PrimaryBack]);
        assert!(back.actions.is_empty());
    }

    #[test]
    fn a_standby_that_loses_waits_before_standing_again_and_says_why() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let steps = run(node, down_then(vec![]));
        let mut local = standby_at(T0 + 3 * SEC);
        local.lease_clock = 50 * SEC;
        local.random = 500;
        let lost = Input::Election {
            me: "s1".into(),
            term: 1,
            claim: Some(2),
            answers: vec![(
                "s2".into(),
                Err(crate::leader::Refusal::TimelineTaken { highest: 3 }),
            )],
            error: None,
        };
        let after = step(&steps[2].state, lost, &local);
        assert_eq!(after.state.standby.phase, Phase::Refusing);
        assert!(after.actions.is_empty());
        assert_eq!(kinds(&after), vec![EventKind::ElectionLost]);
        // Within 1.5 s the next check refuses with the reason; after it, it stands again in term 2
        // (its own vote in term 1 is on disk), claiming above the timeline s2 named.
        local.term = 1;
        local.lease_clock += SEC;
        let held = step(&after.state, Input::Checked(refused()), &local);
        assert!(held.actions.is_empty());
        assert!(held.events[0]
            .detail
            .contains("an election was lost: standing again in 500 ms"));
        local.lease_clock += SEC;
        let again = step(&held.state, Input::Checked(refused()), &local);
        assert_eq!(
            again.actions,
            vec![Action::Stand {
                term: 2,
                primary: false,
                known_timeline: 3
            }]
        );
    }

    #[test]
    fn a_primary_refused_by_a_majority_for_their_lease_to_another_leader_is_superseded() {
        let node = Node::new(three_members(), T0, false);
        let mut local = primary_at(T0);
        local.lease_clock = 10 * SEC;
        let held = |leader: &str| {
            Err(crate::leader::Refusal::LeaseHeld {
                leader: leader.into(),
                term: 4,
                left: SEC,
            })
        };
        // Its own candidacies took its term past the leader's: no refusal names a newer term.
        let lost = Input::Election {
            me: "p".into(),
            term: 44,
            claim: None,
            answers: vec![("s1".into(), held("s1")), ("s2".into(), held("s1"))],
            error: None,
        };
        let out = step(&node, lost, &local);
        assert!(
            out.actions.contains(&Action::Fence {
                permanent: true,
                reason: "a majority of the members hold a lease to s1: this server was failed over from; \
                         rejoin it with pg_rewind or a new base backup"
                    .into()
            }),
            "{:?}",
            out.actions
        );
        assert!(matches!(out.state.primary.fence, Fence::Superseded { ref by, .. } if by == "s1"));
        // One member's lease is no majority: fenced for now, not for good.
        let one = Input::Election {
            me: "p".into(),
            term: 44,
            claim: None,
            answers: vec![
                ("s1".into(), held("s1")),
                (
                    "s2".into(),
                    Err(crate::leader::Refusal::Unreachable("cut".into())),
                ),
            ],
            error: None,
        };
        let out = step(&node, one, &local);
        assert!(!matches!(out.state.primary.fence, Fence::Superseded { .. }));
        assert!(!out
            .actions
            .iter()
            .any(|a| matches!(a, Action::Fence { permanent: true, .. })));
    }

    #[test]
    fn a_primary_whose_own_grant_to_another_leader_outlasts_a_lease_is_superseded() {
        // The chaos run's seed 3, replayed alongside others: an old primary whose worker never
        // held a lease since it started, and whose own member grants s2 the lease of term 7,
        // cannot stand at all: no member is even asked.
        let node = Node::new(three_members(), T0, false);
        let mut local = primary_at(T0);
        local.lease_clock = 10 * SEC;
        let own = |leader: &str| Input::Election {
            me: "p".into(),
            term: 8,
            claim: None,
            answers: Vec::new(),
            error: Some(Refusal::LeaseHeld {
                leader: leader.into(),
                term: 4,
                left: 5 * SEC,
            }),
        };
        let first = step(&node, own("s2"), &local);
        assert_eq!(kinds(&first), vec![EventKind::ElectionLost]);
        assert!(
            first.actions.is_empty(),
            "a leader that stopped would let its grant run out"
        );
        // Another leader, or a stand that went through, starts the count again.
        local.lease_clock += 6 * SEC;
        let other = step(&first.state, own("s1"), &local);
        assert!(other.actions.is_empty());
        // The grant's end as the member reported it first (another node's settings may ask for
        // a longer lease than this one's).
        local.lease_clock += 5 * SEC;
        let still = step(&other.state, own("s1"), &local);
        assert!(still.actions.is_empty(), "up to the end the grant first had");
        // Still held past that end: s1 renewed it, so it is alive and elected.
        local.lease_clock += 1;
        let out = step(&still.state, own("s1"), &local);
        assert!(matches!(out.state.primary.fence, Fence::Superseded { ref by, .. } if by == "s1"));
        assert!(out.events[1].detail.starts_with(
            "this server's own member has renewed s1's lease of a newer term past the end it first had"
        ));
        assert!(matches!(
            &out.actions[..],
            [Action::Fence { permanent: true, .. }]
        ));
        // A standby that cannot stand for its own grant follows that leader instead: never fenced.
        let mut standby = primary_at(T0);
        standby.in_recovery = true;
        standby.lease_clock = 100 * SEC;
        let s = step(&node, own("s1"), &standby);
        standby.lease_clock += 10 * SEC;
        let s = step(&s.state, own("s1"), &standby);
        assert!(!s.actions.iter().any(|a| matches!(a, Action::Fence { .. })));
    }

    #[test]
    fn a_primary_stands_to_lead_then_renews_and_is_fenced_when_its_lease_lapses() {
        let node = Node::new(three_members(), T0, false);
        let mut local = primary_at(T0);
        local.lease_clock = 10 * SEC;
        let stand = step(&node, Input::Due, &local);
        assert_eq!(
            stand.actions,
            vec![Action::Stand {
                term: 1,
                primary: true,
                known_timeline: 0
            }]
        );
        let won = Input::Election {
            me: "p".into(),
            term: 1,
            claim: None,
            answers: ok(&["s1", "s2"]),
            error: None,
        };
        let elected = step(&stand.state, won, &local);
        assert_eq!(elected.actions, vec![Action::RenewLease { term: 1 }]);
        let leased = Input::Leases {
            term: 1,
            sent_at: 10 * SEC,
            answers: ok(&["p", "s1"]),
        };
        let leading = step(&elected.state, leased, &local);
        assert!(leading.state.leading.may_commit(11 * SEC));
        assert_eq!(
            step(&leading.state, Input::Due, &local).actions,
            vec![Action::RenewLease { term: 1 }]
        );

        // Rounds with only its own grant: fenced once the lease has run out (2 s less 1 %).
        local.lease_clock = 12 * SEC;
        let short = Input::Leases {
            term: 1,
            sent_at: 12 * SEC,
            answers: ok(&["p"]),
        };
        let lapsed = step(&leading.state, short.clone(), &local);
        assert_eq!(kinds(&lapsed), vec![EventKind::LeaseLost, EventKind::Fenced]);
        assert!(matches!(
            lapsed.actions[..],
            [Action::Fence { permanent: false, .. }]
        ));
        let back = Input::Leases {
            term: 1,
            sent_at: 12 * SEC,
            answers: ok(&["p", "s2"]),
        };
        let renewed = step(&lapsed.state, back, &local);
        assert_eq!(renewed.actions, vec![Action::Unfence]);
        assert_eq!(
            kinds(&renewed),
            vec![EventKind::LeaseRenewed, EventKind::Unfenced]
        );
    }

    #[test]
    fn a_primary_told_of_a_newer_leader_is_fenced_for_good() {
        let node = Node::new(three_members(), T0, false);
        let start = Input::Start {
            pid: 1,
            marker: None,
            leads: Some(3),
        };
        let mut local = primary_at(T0);
        local.lease_clock = 10 * SEC;
        let started = step(&node, start, &local);
        assert_eq!(
            step(&started.state, Input::Due, &local).actions,
            vec![Action::RenewLease { term: 3 }]
        );
        let newer = crate::leader::Refusal::StaleTerm {
            current: 4,
            leader: Some("s1".into()),
        };
        let round = Input::Leases {
            term: 3,
            sent_at: 10 * SEC,
            answers: vec![("p".into(), Ok(())), ("s2".into(), Err(newer))],
        };
        let fenced = step(&started.state, round, &local);
        assert!(matches!(
            fenced.actions[..],
            [Action::Fence { permanent: true, .. }]
        ));
        assert!(matches!(fenced.state.primary.fence, Fence::Superseded { .. }));
        assert!(
            step(&fenced.state, Input::Due, &local).actions.is_empty(),
            "it asks no more"
        );
    }

    fn leader(name: &str, upstream_is_leader: bool) -> Input {
        Input::Leader {
            leader: Some(name.into()),
            term: 1,
            me: Some("s2".into()),
            upstream_is_leader,
        }
    }

    #[test]
    fn a_standby_follows_a_new_leader_once_but_keeps_a_live_upstream_it_started_with() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let local = standby_at(T0);
        // Its upstream is a standby (a cascade).
        let cascade = Input::Checked(Outcome::Answered {
            in_recovery: true,
            lsn: None,
            timeline: None,
            started: Some(7),
            fenced: false,
        });
        let node = step(&node, cascade, &local).state;
        // A new cluster's first leader is not a change: a cascade stays.
        let none = Input::Leader {
            leader: None,
            term: 1,
            me: Some("s2".into()),
            upstream_is_leader: false,
        };
        let fresh = step(&node, none, &local);
        assert!(step(&fresh.state, leader("p", false), &local).actions.is_empty());
        // At start, the leader it knows is not its upstream (a cascade): it stays.
        let first = step(&node, leader("p", false), &local);
        assert!(first.actions.is_empty());
        // s1 wins: follow it, once.
        let follow = step(&first.state, leader("s1", false), &local);
        assert_eq!(
            follow.actions,
            vec![Action::Follow {
                leader: "s1".into(),
                conninfo: "host=s1".into(),
                slot: None
            }]
        );
        assert!(step(&follow.state, leader("s1", false), &local)
            .actions
            .is_empty());
        let done = Input::Followed {
            leader: "s1".into(),
            result: Ok(None),
        };
        assert_eq!(
            kinds(&step(&follow.state, done, &local)),
            vec![EventKind::Following]
        );
        // A failure is recorded, and the next input tries again.
        let failed = Input::Followed {
            leader: "s1".into(),
            result: Err("connection refused".into()),
        };
        let failed = step(&follow.state, failed, &local);
        assert_eq!(kinds(&failed), vec![EventKind::FollowFailed]);
        assert_eq!(step(&failed.state, leader("s1", false), &local).actions.len(), 1);
        // Already streaming from the leader, or the leader is itself: nothing to do.
        assert!(step(&first.state, leader("s1", true), &local).actions.is_empty());
        assert!(step(&first.state, leader("s2", false), &local).actions.is_empty());
    }

    #[test]
    fn a_standby_started_on_an_old_primary_follows_the_leader_it_knows() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let local = standby_at(T0);
        // Its upstream answers as a primary, and the leader it knows (s1) is another node.
        let checked = step(&node, on_timeline(1), &local);
        let first = step(&checked.state, leader("s1", false), &local);
        assert!(
            matches!(&first.actions[..], [Action::Follow { leader, .. }] if leader == "s1"),
            "{:?}",
            first.actions
        );
        // Its upstream answers as a standby (a cascade): it stays.
        let cascade = Input::Checked(Outcome::Answered {
            in_recovery: true,
            lsn: None,
            timeline: None,
            started: Some(7),
            fenced: false,
        });
        let checked = step(&node, cascade, &local);
        assert!(step(&checked.state, leader("s1", false), &local)
            .actions
            .is_empty());
    }

    #[test]
    fn a_standby_whose_upstream_is_down_follows_the_leader_it_knows() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let steps = run(node, down_then(vec![]));
        let down = &steps[2].state;
        let first = step(down, leader("p", false), &standby_at(T0));
        assert!(matches!(first.actions[..], [Action::Follow { .. }]));
        // Without leadership (two nodes), nothing follows.
        let mut two = down.clone();
        two.settings.peers.truncate(2);
        assert!(step(&two, leader("p", false), &standby_at(T0)).actions.is_empty());
    }

    fn on_timeline(timeline: u32) -> Input {
        Input::Checked(Outcome::Answered {
            in_recovery: false,
            lsn: Some(0x6000000),
            timeline: Some(timeline),
            started: Some(7),
            fenced: false,
        })
    }

    fn histories(primary: &str) -> Input {
        Input::History {
            timeline: 2,
            read: Ok(crate::rewind::Histories {
                primary_timeline: 2,
                primary: primary.into(),
                timeline: 1,
                own: None,
                data_dir: "/d".into(),
                source: "host=s1".into(),
                slot: None,
            }),
        }
    }

    #[test]
    fn a_standby_past_the_fork_of_its_primarys_new_timeline_needs_rewind_and_does_not_promote() {
        let mut local = standby_at(T0);
        local.replay_timeline = Some(1);
        local.replay_lsn = Some(0x3000200);
        let asked = step(&reached(), on_timeline(2), &local);
        assert_eq!(
            asked.actions,
            vec![Action::ReadHistory {
                timeline: 2,
                own_timeline: 1
            }]
        );
        let behind = step(
            &asked.state,
            histories("1\t0/4000000\tno recovery target specified\n"),
            &local,
        );
        assert!(behind.events.is_empty() && behind.actions.is_empty());
        assert_eq!(behind.state.standby.needs_rewind, None);
        assert_eq!(behind.state.standby.rewind_unknown, None);
        // Read once; judged again at every check, with what was received even if not replayed.
        let again = step(&behind.state, on_timeline(2), &local);
        assert!(again.actions.is_empty() && again.events.is_empty());
        local.receive_lsn = Some(0x4000100);
        local.receive_timeline = Some(2);
        let streaming = step(&again.state, on_timeline(2), &local);
        assert!(
            streaming.events.is_empty() && streaming.state.standby.needs_rewind.is_none(),
            "received on the primary's timeline: it follows"
        );
        local.receive_timeline = Some(1);
        let past = step(&again.state, on_timeline(2), &local);
        assert!(past.actions.is_empty(), "no new read");
        assert_eq!(kinds(&past), vec![EventKind::NeedsRewind]);
        assert!(past.events[0]
            .detail
            .contains("pg_rewind --target-pgdata='/d' --source-server='host=s1' --write-recovery-conf"));
        assert!(past.state.standby.needs_rewind.is_some());
        assert!(
            step(&past.state, on_timeline(2), &local).events.is_empty(),
            "recorded once"
        );
        // The primary dies: this standby's data diverged, it does not promote.
        let mut node = past.state;
        for i in 0..3 {
            node = step(&node, Input::Checked(refused()), &standby_at(T0 + (i + 1) * SEC)).state;
        }
        assert_eq!(node.standby.phase, Phase::Refusing);
        assert!(node.standby.refused_by.contains(&standby::Guard::NeedsRewind));
    }

    #[test]
    fn a_history_that_could_not_be_read_is_read_again_and_holds_the_promotion_meanwhile() {
        let mut local = standby_at(T0);
        local.replay_timeline = Some(1);
        local.replay_lsn = Some(0x3000200);
        let asked = step(&reached(), on_timeline(2), &local);
        assert!(
            asked.state.standby.rewind_unknown.is_some(),
            "unknown while it is read"
        );
        let failed = Input::History {
            timeline: 2,
            read: Err("permission denied for function pg_read_file".into()),
        };
        let first = step(&asked.state, failed.clone(), &local);
        assert_eq!(kinds(&first), vec![EventKind::Misconfigured]);
        assert!(first.events[0]
            .detail
            .contains("does not promote until it is known"));
        let retry = step(&first.state, on_timeline(2), &local);
        assert!(matches!(
            retry.actions[..],
            [Action::ReadHistory { timeline: 2, .. }]
        ));
        assert!(
            step(&retry.state, failed, &local).events.is_empty(),
            "recorded once"
        );
        // The primary dies while it is unknown: no promotion.
        let mut node = first.state.clone();
        for i in 0..3 {
            node = step(&node, Input::Checked(refused()), &standby_at(T0 + (i + 1) * SEC)).state;
        }
        assert_eq!(node.standby.phase, Phase::Refusing);
        assert!(node.standby.refused_by.contains(&standby::Guard::RewindUnknown));
        // Read at last: known, and no longer held.
        let read = step(&retry.state, histories("1\t0/4000000\tx\n"), &local);
        assert_eq!(read.state.standby.rewind_unknown, None);
        assert_eq!(read.state.standby.needs_rewind, None);
    }

    #[test]
    fn a_history_of_the_same_timeline_that_could_not_be_read_is_not_asked_again() {
        let mut local = standby_at(T0);
        local.replay_timeline = Some(2);
        let asked = step(&reached(), on_timeline(2), &local);
        assert!(matches!(
            asked.actions[..],
            [Action::ReadHistory {
                timeline: 2,
                own_timeline: 2
            }]
        ));
        assert_eq!(
            asked.state.standby.rewind_unknown, None,
            "no hold on one timeline"
        );
        let failed = Input::History {
            timeline: 2,
            read: Err("permission denied for function pg_read_file".into()),
        };
        let first = step(&asked.state, failed, &local);
        assert_eq!(kinds(&first), vec![EventKind::Misconfigured]);
        let next = step(&first.state, on_timeline(2), &local);
        assert!(
            next.actions.is_empty(),
            "not asked at every check: {:?}",
            next.actions
        );
        assert!(next.state.standby.rewind_unknown.is_none());
    }

    #[test]
    fn a_healthy_follower_on_its_primarys_timeline_needs_no_history_and_no_rewind() {
        let mut local = standby_at(T0);
        local.replay_timeline = Some(1);
        local.replay_lsn = Some(0x9000000);
        let same = step(&reached(), on_timeline(1), &local);
        assert!(same.actions.is_empty() && same.events.is_empty());
        assert_eq!(same.state.standby.needs_rewind, None);
        assert_eq!(same.state.standby.rewind_unknown, None);
        // An older primary timeline cannot be followed either.
        local.replay_timeline = Some(2);
        let older = step(&reached(), on_timeline(1), &local);
        assert!(matches!(
            older.actions[..],
            [Action::ReadHistory {
                timeline: 1,
                own_timeline: 2
            }]
        ));
        assert_eq!(
            older.state.standby.rewind_unknown, None,
            "no hold for an older one"
        );
    }

    #[test]
    fn where_members_use_slots_a_winner_creates_its_followers_and_a_follower_names_its_own() {
        let node = Node {
            settings: three_members(),
            ..reached()
        };
        let mut local = standby_at(T0);
        local.uses_slots = true;
        let steps = run(node, down_then(vec![]));
        let won = Input::Election {
            me: "s1".into(),
            term: 1,
            claim: Some(3),
            answers: ok(&["s2"]),
            error: None,
        };
        let elected = step(&steps[2].state, won, &local);
        assert_eq!(elected.actions, vec![Action::RenewLease { term: 1 }]);
        assert_eq!(elected.state.slots_after_promotion, vec!["p", "s2"]);
        let writable = Promotion::Writable {
            waited: Duration::from_millis(5),
            total: Duration::from_millis(9),
            timeline: Some(4),
        };
        let promoted = step(&elected.state, Input::Promotion(writable), &local);
        // Landed past its claim: said, not hidden.
        assert!(promoted.events[0]
            .detail
            .ends_with("onto timeline 4, not timeline 3 claimed in the election (PostgreSQL found a history file of timeline 3, in pg_wal or the archive)"));
        assert_eq!(
            promoted.actions.first(),
            Some(&Action::CreateSlots {
                names: vec!["p".into(), "s2".into()]
            })
        );
        assert!(promoted.state.slots_after_promotion.is_empty());
        let first = step(&reached(), leader("p", true), &local);
        let mut three = first.state.clone();
        three.settings = three_members();
        let follow = step(&three, leader("s1", false), &local);
        assert!(
            matches!(&follow.actions[..], [Action::Follow { slot: Some(s), .. }] if s == "s2"),
            "{:?}",
            follow.actions
        );
    }
}
