//! Offline evaluation end to end on generated data: the platform must beat the popularity baseline.

use reco_cli::{
    eval,
    platform::{Platform, PlatformConfig},
};
use reco_integration_tests::Wiring;

async fn the_platform_beats_popularity_on_held_out_interactions(wiring: Wiring) {
    let data = reco_data::generate(&reco_data::GenConfig {
        users: 400,
        items: 300,
        seed: 5,
        ..Default::default()
    });
    let split = eval::split(&data, eval::SplitConfig::default());
    assert!(split.held_out.len() > 300);
    let mut cfg = PlatformConfig {
        wiring,
        ..Default::default()
    };
    reco_integration_tests::relax_budgets(&mut cfg.gateway);
    let platform = Platform::start(cfg).await.unwrap();
    reco_cli::load::load(reco_data::derive(&split.train, 5), &platform.addrs)
        .await
        .unwrap();

    let report = eval::run(&platform.addrs.gateway.to_string(), &split, usize::MAX)
        .await
        .unwrap();
    assert_eq!(report.users, split.held_out.len());
    assert_eq!((report.errors, report.degraded), (0, 0));
    for s in [report.platform, report.popular] {
        assert!(
            (0.0..=1.0).contains(&s.ndcg)
                && (0.0..=1.0).contains(&s.hit)
                && (0.0..=1.0).contains(&s.recall)
        );
    }
    assert!(
        report.platform.ndcg > report.popular.ndcg,
        "reco NDCG@10 {:.4} vs popularity {:.4}",
        report.platform.ndcg,
        report.popular.ndcg
    );
    assert!(report.table("generated").contains("NDCG@10"));

    // The same services behind a gateway that does not rank: the merged recall order, which ranking must beat.
    let (unranked_addr, stop) = eval::start_unranked_gateway(&platform).await.unwrap();
    let unranked = eval::run(&unranked_addr, &split, usize::MAX).await.unwrap();
    assert!(
        report.platform.ndcg > unranked.platform.ndcg,
        "ranked NDCG@10 {:.4} vs unranked {:.4}",
        report.platform.ndcg,
        unranked.platform.ndcg
    );
    let _ = stop.send(());
    platform.shutdown().await.unwrap();
}

reco_integration_tests::on_both_wirings!(the_platform_beats_popularity_on_held_out_interactions,);
