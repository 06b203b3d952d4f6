//! Reads a dataset and prints what it holds: `cargo run -p reco-data --example read -- PATH [--strict]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().expect("usage: read PATH [--strict]"));
    let strict = args.any(|a| a == "--strict");
    let started = std::time::Instant::now();
    match reco_data::read::read(
        &path,
        reco_data::read::Format::Auto,
        reco_data::read::ReadOptions { strict },
    ) {
        Ok((data, report)) => {
            println!(
                "{}: {} users, {} items, {} interactions, {} follows; {} rows read, {} rejected, in {:?}",
                data.name,
                data.users.len(),
                data.items.len(),
                data.events.len(),
                data.follows.len(),
                report.total_read(),
                report.total_rejected(),
                started.elapsed()
            );
            for r in report.rejected.iter().take(10) {
                println!("  rejected {r}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
