//! The shared test suite every GraphStore backend must pass, on a fresh store.

use std::time::Duration;

use reco_types::UserId;

use crate::{Edge, EdgeKind, GraphStore, RecallQuery, Strategy, TargetKind};

fn e(kind: EdgeKind, s: &str, d: &str, w: f32) -> Edge {
    Edge::parse(kind, s, d, w).unwrap()
}

fn query(user: &str, strategies: &[Strategy]) -> RecallQuery {
    RecallQuery {
        user: UserId::parse("user_id", user).unwrap(),
        strategies: strategies.to_vec(),
        k: 10,
        max_steps: 20_000,
        time_budget: Duration::from_secs(5),
    }
}

/// A user id that would break a query built by pasting ids into text.
pub const HOSTILE: &str = "o'brien\"}) DETACH DELETE n RETURN 1 //";
const HOSTILE_ITEM: &str = "x' OR 1=1 MATCH (m) SET m.id = 'pwned";

pub async fn run_all(g: &dyn GraphStore) {
    use EdgeKind::*;
    // alice follows bob and carol; both follow dave; bob follows erin.
    let edges = vec![
        e(Follows, "alice", "bob", 1.0),
        e(Follows, "alice", "carol", 1.0),
        e(Follows, "bob", "dave", 1.0),
        e(Follows, "carol", "dave", 1.0),
        e(Follows, "bob", "erin", 1.0),
        e(Follows, "bob", "alice", 1.0),
        e(Engaged, "alice", "song1", 3.0),
        e(Engaged, "bob", "song1", 1.0),
        e(Engaged, "bob", "song2", 5.0),
        e(Engaged, "carol", "song2", 2.0),
        e(Engaged, "carol", "song3", 1.0),
        e(Engaged, "zed", "song1", 1.0),
        e(Engaged, "zed", "song4", 1.0),
        e(HasTag, "song1", "rock", 1.0),
        e(Created, "bob", "song2", 1.0),
        // A friend of a friend's item counts at half weight.
        e(Engaged, "dave", "song5", 1.0),
        // Ids are data, never query text: quotes, braces and Cypher keywords must round-trip untouched.
        e(Follows, HOSTILE, "alice", 1.0),
        e(Engaged, HOSTILE, "song1", 1.0),
        e(Engaged, HOSTILE, HOSTILE_ITEM, 2.0),
    ];
    assert_eq!(g.add_edges(edges.clone()).await.unwrap(), edges.len());
    assert_eq!(
        g.add_edges(vec![edges[0].clone()]).await.unwrap(),
        0,
        "an existing edge is not added twice"
    );
    let stats = g.stats().await.unwrap();
    assert_eq!(stats.edges, edges.len() as u64);
    assert_eq!((stats.users, stats.items, stats.tags), (7, 6, 1));

    let fof = g
        .recall(&query("alice", &[Strategy::FriendsOfFriends]))
        .await
        .unwrap()
        .candidates;
    let ids: Vec<_> = fof.iter().map(|c| (c.id.as_str(), c.kind)).collect();
    assert_eq!(
        ids,
        [("dave", TargetKind::User), ("erin", TargetKind::User)],
        "dave has 2 mutual friends"
    );
    assert!(fof[0].reason.contains('2'), "{}", fof[0].reason);

    let friends_items = g
        .recall(&query("alice", &[Strategy::FriendsItems]))
        .await
        .unwrap()
        .candidates;
    let ids: Vec<_> = friends_items.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        ["song2", "song3", "song5"],
        "song1 is already alice's; song2 is liked by two friends; song5 by a friend of friends"
    );
    let want = [6f32.ln() + 3f32.ln(), 2f32.ln(), 0.5 * 2f32.ln()];
    for (c, w) in friends_items.iter().zip(want) {
        assert!((c.score - w).abs() < 1e-4, "{}: {} != {w}", c.id, c.score);
    }
    assert_eq!(
        friends_items[0].reason,
        "engaged by 2 friends and friends of friends"
    );

    let shared = g
        .recall(&query("alice", &[Strategy::SharedInterests]))
        .await
        .unwrap()
        .candidates;
    let ids: Vec<_> = shared.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        ["song2", HOSTILE_ITEM, "song4"],
        "bob, zed and the hostile user share song1 with alice: their other items, heaviest first"
    );

    let hostile = g
        .recall(&query(
            HOSTILE,
            &[Strategy::FriendsOfFriends, Strategy::SharedInterests],
        ))
        .await
        .unwrap()
        .candidates;
    let ids: Vec<_> = hostile.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["bob", "carol", "song2", "song4"], "{hostile:?}");

    let walk = g
        .recall(&query("alice", &[Strategy::RandomWalk]))
        .await
        .unwrap();
    let ids: Vec<_> = walk.candidates.iter().map(|c| c.id.as_str()).collect();
    assert!(
        !ids.is_empty() && !ids.contains(&"song1"),
        "walks reach new items, not the seeds: {ids:?}"
    );
    assert!(
        ids.iter()
            .all(|i| ["song2", "song3", "song4", HOSTILE_ITEM].contains(i)),
        "only reachable items: {ids:?}"
    );
    assert!(walk.steps > 0);

    assert!(
        g.recall(&query("nobody", &[Strategy::FriendsItems]))
            .await
            .unwrap()
            .candidates
            .is_empty()
    );

    assert_eq!(
        g.remove_edges(vec![
            e(Follows, "carol", "dave", 1.0),
            e(Follows, "x", "y", 1.0)
        ])
        .await
        .unwrap(),
        1
    );
    let fof = g
        .recall(&query("alice", &[Strategy::FriendsOfFriends]))
        .await
        .unwrap()
        .candidates;
    assert_eq!(fof[0].score, 1.0);
}
