//! Generates a dataset and prints its size and the time taken:
//! `cargo run --release -p reco-data --example generate -- USERS ITEMS`.

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let cfg = reco_data::GenConfig {
        users: args.next().unwrap_or(1_000_000),
        items: args.next().unwrap_or(100_000),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let d = reco_data::generate(&cfg);
    println!(
        "{} users, {} items, {} interactions, {} follows in {:.1?}",
        d.users.len(),
        d.items.len(),
        d.events.len(),
        d.follows.len(),
        started.elapsed()
    );
}
