//! `reco`: run the whole platform on one machine, and talk to it.

// mimalloc: the services allocate many short-lived buffers per request; glibc malloc's consolidation showed at
// the top of the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use clap::{Parser, Subcommand};
use reco_cli::{
    dataset::DataArgs,
    load,
    platform::{Platform, PlatformConfig, Wiring},
    show,
};
use reco_proto::gateway::v1::{RecommendRequest, gateway_client::GatewayClient};
use reco_telemetry::TelemetryArgs;

#[derive(Parser)]
#[command(name = "reco", about = "The reco recommendation platform", version)]
struct Cli {
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all six services in this process on the embedded backends, load data, and serve until Ctrl-C.
    Up(UpArgs),
    /// Ask a running gateway for a user's recommendations.
    Recommend(RecommendArgs),
    /// Hold out each user's latest interactions, load the rest into a platform of its own, and score its
    /// recommendations (HitRate, NDCG, Recall at 10) beside a popularity baseline.
    Eval(EvalArgs),
    /// Load-test the gateway or the feature service: open loop at a rate (latency from the intended send time),
    /// or closed loop; HDR percentiles, errors by status, per-stage latencies.
    Bench(BenchArgs),
    /// Measure the stream path against a running platform and a Kinesis API: how many events a second the
    /// ingest service records from a backlog, and how soon a click put on the stream leaves the user's next answer.
    BenchEvents(BenchEventsArgs),
    /// Learn the ranking model from a dataset (split by time: features from the past, labels from what came next)
    /// and write it as a model file the ranking service loads (and reloads when it changes).
    Train(TrainArgs),
    /// Bulk-load a dataset into running services: features into a new version, switched to atomically once
    /// complete, then vectors, graph edges and sequences.
    Sync(SyncArgs),
    /// Read users' events from a Kinesis stream and record them through a gateway (`reco ingest --help`): the
    /// ingest service, as `reco serve ingest` runs it.
    Ingest {
        /// The ingest service's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run one service in this process, with the flags of its own binary (`reco serve feature --help`).
    Serve {
        /// feature, cache, vector-recall, graph-recall, ranking or gateway.
        service: String,
        /// The service's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct BenchEventsArgs {
    /// The gateway (events are recorded and answers asked through it).
    #[arg(long, default_value = "127.0.0.1:50051")]
    gateway_addr: String,
    /// The cache service (the recent clicks say when the backlog is recorded).
    #[arg(long, default_value = "127.0.0.1:50053")]
    cache_addr: String,
    /// The Kinesis endpoint (a moto server: http://127.0.0.1:5000); without it, AWS's.
    #[arg(long)]
    kinesis_endpoint_url: Option<String>,
    #[arg(long)]
    kinesis_region: Option<String>,
    /// Shards of the stream the bench creates.
    #[arg(long, default_value_t = 2)]
    shards: i32,
    /// Records in the backlog.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Freshness samples, one after another.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// The consumer's poll interval, ms.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// How often Recommend is asked again while waiting for a click to show, ms.
    #[arg(long, default_value_t = 5)]
    check_ms: u64,
    /// The platform's data, for item ids to click.
    #[command(flatten)]
    data: DataArgs,
    /// Print the figures as one JSON line too.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// What to call.
    #[arg(long, value_enum, default_value = "recommend")]
    target: reco_cli::bench::Target,
    /// The service to load (the one the target calls: gateway, feature, cache, vector-recall, graph-recall or
    /// ranking). Without it, a platform is
    /// started in this process with the data flags' data, and loaded (load generator included in the figures).
    #[arg(long)]
    addr: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Requests per second, open loop.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Closed loop instead: this many workers sending back to back.
    #[arg(long)]
    closed: Option<usize>,
    /// Find the most throughput with p99 under --p99-limit-ms and at most 1% degraded answers, in closed loop at 1,
    /// 2, 4, ... 64 workers.
    #[arg(long)]
    find_max: bool,
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Most requests in flight at once in open loop.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// The deadline each request carries.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Print the figures as JSON too.
    #[arg(long)]
    json: bool,
    /// user-context and item-batch: build each answer as Rust structs (as the gateway does) instead of reading
    /// and checking its fields without building them; the load generator then takes several times the CPU.
    #[arg(long)]
    decode_answers: bool,
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use reco_cli::bench::{BenchConfig, Target, run};
    let data = args.data.load()?;
    let users: Vec<String> = data.users.iter().map(|u| u.id.clone()).collect();
    let items: Vec<String> = data.items.iter().map(|i| i.id.clone()).collect();
    let (platform, addr) = match &args.addr {
        Some(a) => (None, a.clone()),
        None => {
            let platform = Platform::start(PlatformConfig::default()).await?;
            load::load(reco_data::derive(&data, args.data.seed), &platform.addrs).await?;
            let addr = match args.target {
                Target::Recommend | Target::RecordEvents => platform.addrs.gateway,
                Target::UserContext | Target::ItemBatch => platform.addrs.feature,
                Target::CacheGet => platform.addrs.cache,
                Target::VectorSearch => platform.addrs.vector,
                Target::GraphRecall => platform.addrs.graph,
                Target::Rank => platform.addrs.ranking,
            };
            (Some(platform), addr.to_string())
        }
    };
    let base = BenchConfig {
        target: args.target,
        addr,
        rate: Some(args.rate),
        concurrency: args.max_in_flight,
        duration: Duration::from_secs(args.duration_secs),
        warmup: Duration::from_secs(args.warmup_secs),
        users,
        items,
        timeout: Duration::from_millis(args.timeout_ms),
        decode_answers: args.decode_answers,
    };
    if args.find_max {
        let mut best: Option<(usize, f64, f64)> = None;
        let mut steps = Vec::new();
        println!(
            "{:>8} {:>10} {:>9} {:>9} {:>9}",
            "workers", "ok/s", "p50 ms", "p99 ms", "degraded"
        );
        for workers in [1, 2, 4, 8, 16, 32, 64] {
            let r = run(&BenchConfig {
                rate: None,
                concurrency: workers,
                ..base.clone()
            })
            .await?;
            let p99 = r.latency.value_at_quantile(0.99) as f64 / 1000.0;
            steps.push(serde_json::json!({
                "workers": workers,
                "throughput": r.throughput(),
                "p50_ms": r.latency.value_at_quantile(0.5) as f64 / 1000.0,
                "p99_ms": p99,
                "degraded": r.degraded,
                "errors": r.errors,
            }));
            println!(
                "{workers:>8} {:>10.0} {:>9.2} {p99:>9.2} {:>8.1}%{}",
                r.throughput(),
                r.latency.value_at_quantile(0.5) as f64 / 1000.0,
                100.0 * r.degraded as f64 / r.ok.max(1) as f64,
                if r.errors.is_empty() {
                    String::new()
                } else {
                    format!("  errors {:?}", r.errors)
                }
            );
            // Degraded answers are cheap ones (a stage cut off): a step that degrades more than 1% is not a
            // throughput the platform sustains.
            let full = r.degraded as f64 <= 0.01 * r.ok as f64;
            if p99 <= args.p99_limit_ms && full && best.is_none_or(|b| r.throughput() > b.1) {
                best = Some((workers, r.throughput(), p99));
            }
        }
        match best {
            Some((w, t, p)) => println!(
                "most throughput with p99 under {} ms: {t:.0} ok/s at {w} workers (p99 {p:.2} ms)",
                args.p99_limit_ms
            ),
            None => println!("no concurrency kept p99 under {} ms", args.p99_limit_ms),
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "p99_limit_ms": args.p99_limit_ms,
                    "best": best.map(|(w, t, p)| serde_json::json!({"workers": w, "throughput": t, "p99_ms": p})),
                    "steps": steps,
                })
            );
        }
    } else {
        let cfg = BenchConfig {
            rate: if args.closed.is_some() {
                None
            } else {
                Some(args.rate)
            },
            concurrency: args.closed.unwrap_or(args.max_in_flight),
            ..base
        };
        let r = run(&cfg).await?;
        match cfg.rate {
            Some(rate) => println!(
                "open loop at {rate}/s against {:?} for {:?}",
                cfg.target, cfg.duration
            ),
            None => println!(
                "closed loop, {} workers, against {:?} for {:?}",
                cfg.concurrency, cfg.target, cfg.duration
            ),
        }
        print!("{}", r.table());
        if args.json {
            println!("{}", r.json());
        }
    }
    if let Some(p) = platform {
        p.shutdown().await?;
    }
    Ok(())
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Where to write the model.
    #[arg(long, default_value = "model.json")]
    out: std::path::PathBuf,
    /// The model's version name (default: trained-<unix seconds>).
    #[arg(long)]
    version: Option<String>,
}

async fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = args.data.load()?;
    let version = args
        .version
        .unwrap_or_else(|| reco_cli::load::version_now().replace("snapshot", "trained"));
    let t = reco_cli::train::train_on(&data, args.data.seed, &version)?;
    t.model.save(&args.out)?;
    println!(
        "model {version}: AUC {:.4} on {} held-out rows ({} training rows); the built-in model scores {:.4}",
        t.auc, t.test_rows, t.train_rows, t.default_auc
    );
    for (f, w) in t.model.file().features.iter().zip(&t.model.file().weights) {
        println!("  {f:<22} {w:>10.4}");
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

#[derive(clap::Args)]
struct SyncArgs {
    /// The dataset: a MovieLens or Last.fm directory, or a reco JSON-lines file.
    #[arg(long)]
    dataset: std::path::PathBuf,
    /// The dataset's format (auto detects it from the files).
    #[arg(long, default_value = "auto")]
    format: reco_data::read::Format,
    /// Fail on the first malformed row (nothing is written) instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
    /// Seed of the derivation's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Name of the new feature version (default: snapshot-<unix seconds>).
    #[arg(long)]
    version: Option<String>,
    #[arg(long, env = "RECO_FEATURE_ADDR", default_value = "127.0.0.1:50052")]
    feature_addr: String,
    #[arg(long, env = "RECO_VECTOR_ADDR", default_value = "127.0.0.1:50054")]
    vector_addr: String,
    #[arg(long, env = "RECO_GRAPH_ADDR", default_value = "127.0.0.1:50055")]
    graph_addr: String,
}

async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let to = reco_cli::load::Targets {
        feature: args.feature_addr,
        vector: args.vector_addr,
        graph: args.graph_addr,
    };
    let r = reco_cli::sync::sync(
        &args.dataset,
        args.format,
        args.strict,
        args.seed,
        &to,
        args.version,
        true,
    )
    .await?;
    for (file, n) in &r.read.read {
        let rejected = r.read.rejected_count.get(file).copied().unwrap_or(0);
        println!(
            "read {n:>8} rows, rejected {rejected:>5}: {}",
            file.display()
        );
    }
    for rej in r.read.rejected.iter().take(20) {
        println!("  rejected {rej}");
    }
    let l = &r.loaded;
    println!(
        "wrote {} items, {} users, {} recall pools, {} vectors, {} edges, {} sequences",
        l.items, l.users, l.pools, l.vectors, l.edges, l.sequences
    );
    println!(
        "feature version {} is now active (was {})",
        l.activated.as_deref().unwrap_or("-"),
        l.previous.as_deref().unwrap_or("-")
    );
    Ok(())
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Share of each user's interactions held out (their latest).
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Most held-out interactions per user.
    #[arg(long, default_value_t = 10)]
    max_holdout: usize,
    /// Evaluate at most this many users (the first by id order of appearance).
    #[arg(long, default_value_t = usize::MAX)]
    max_users: usize,
    /// Also print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Rank with this model file instead of the built-in one.
    #[arg(long, conflicts_with = "train_ranker")]
    model: Option<std::path::PathBuf>,
    /// Train the ranking model on the training part first (its own split by time), and rank with it.
    #[arg(long)]
    train_ranker: bool,
}

async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use reco_cli::eval;
    anyhow::ensure!(
        (0.0..1.0).contains(&args.holdout) && args.holdout > 0.0,
        "--holdout must be in (0, 1)"
    );
    let data = args.data.load()?;
    let split = eval::split(
        &data,
        eval::SplitConfig {
            holdout_share: args.holdout,
            max_holdout: args.max_holdout.max(1),
            seed: args.data.seed,
            ..Default::default()
        },
    );
    let held: usize = split.held_out.values().map(|s| s.len()).sum();
    println!(
        "held out {held} interactions of {} users; training on {}",
        split.held_out.len(),
        split.train.events.len()
    );
    let mut cfg = PlatformConfig::default();
    let _model_dir = tempfile::tempdir()?;
    if args.train_ranker {
        let t = reco_cli::train::train_on(&split.train, args.data.seed, "trained-for-eval")?;
        println!(
            "trained the ranker on the training part: AUC {:.4} (built-in model {:.4}) on {} held-out rows",
            t.auc, t.default_auc, t.test_rows
        );
        let path = _model_dir.path().join("model.json");
        t.model.save(&path)?;
        cfg.ranking.model = Some(path);
    } else {
        cfg.ranking.model = args.model.clone();
    }
    let snap = reco_data::derive(&split.train, args.data.seed);
    let platform = Platform::start(cfg).await?;
    load::load(snap, &platform.addrs).await?;
    let mut report = eval::run(&platform.addrs.gateway.to_string(), &split, args.max_users).await?;
    let (unranked, stop) = eval::start_unranked_gateway(&platform).await?;
    report.unranked = Some(eval::run(&unranked, &split, args.max_users).await?.platform);
    let _ = stop.send(());
    print!("{}", report.table(&data.name));
    if args.json {
        println!("{}", report.json(&data.name));
    }
    platform.shutdown().await
}

#[derive(clap::Args)]
struct UpArgs {
    /// Address every service listens on.
    #[arg(long, env = "RECO_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The gateway's port; feature, cache, vector-recall, graph-recall and ranking take the next five. 0 picks
    /// free ports.
    #[arg(long, env = "RECO_BASE_PORT", default_value_t = 50051)]
    base_port: u16,
    #[command(flatten)]
    data: DataArgs,
    /// Keep the durable stores' files here (kept across runs); without it a temporary directory is used.
    #[arg(long, env = "RECO_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Start empty, loading nothing.
    #[arg(long)]
    no_data: bool,
    /// Exit after showing one recommendation instead of serving (for scripts and smoke tests).
    #[arg(long)]
    once: bool,
    /// Run each service as its own process (`reco serve <service>`), as production does, instead of all six in
    /// this one.
    #[arg(long)]
    processes: bool,
    /// With --processes: the services call each other over TCP, not over Unix sockets (to compare the two).
    #[arg(long, requires = "processes")]
    tcp_only: bool,
    /// In one process, the gateway calls the other services over loopback gRPC, as separate deployments do,
    /// instead of calling their implementations directly (to compare the two).
    #[arg(long, conflicts_with = "processes")]
    over_grpc: bool,
}

#[derive(clap::Args)]
struct RecommendArgs {
    /// The gateway.
    #[arg(long, env = "RECO_GATEWAY_ADDR", default_value = "127.0.0.1:50051")]
    gateway: String,
    /// The user.
    #[arg(long)]
    user: String,
    /// How many items.
    #[arg(long)]
    count: Option<u32>,
    /// Run graph recall too.
    #[arg(long)]
    graph: bool,
    /// Skip the result cache.
    #[arg(long)]
    bypass_cache: bool,
}

async fn recommend(gateway: &str, req: RecommendRequest) -> anyhow::Result<String> {
    let mut client = GatewayClient::new(reco_server::channel(gateway)?);
    let mut request = tonic::Request::new(req);
    request.set_timeout(Duration::from_secs(2));
    let answer = client.recommend(request).await?.into_inner();
    Ok(show::answer(&answer))
}

/// The platform `reco up` runs: in this process, or as six processes.
enum Running {
    InProcess(Box<Platform>),
    Processes(Box<reco_cli::processes::ProcessPlatform>),
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let platform = if args.processes {
        let exe = std::env::current_exe()?;
        Running::Processes(Box::new(
            reco_cli::processes::ProcessPlatform::start(
                &exe,
                reco_cli::processes::ProcessOptions {
                    host: args.host,
                    base_port: args.base_port,
                    data_dir: args.data_dir.clone(),
                    unix_sockets: !args.tcp_only,
                    ..Default::default()
                },
            )
            .await?,
        ))
    } else {
        Running::InProcess(Box::new(
            Platform::start(PlatformConfig {
                wiring: if args.over_grpc {
                    Wiring::OverGrpc
                } else {
                    Wiring::InProcess
                },
                host: args.host,
                base_port: args.base_port,
                data_dir: args.data_dir.clone(),
                ..Default::default()
            })
            .await?,
        ))
    };
    let a = match &platform {
        Running::InProcess(p) => p.addrs.clone(),
        Running::Processes(p) => p.addrs.clone(),
    };
    let sample_user = if args.no_data {
        "u1".to_string()
    } else {
        let data = args.data.load()?;
        let snap = reco_data::derive(&data, args.data.seed);
        let sample = snap
            .pools
            .first()
            .map(|(u, _)| u.to_string())
            .unwrap_or_else(|| "u1".into());
        let r = load::load(snap, &a).await?;
        println!(
            "loaded {} users, {} items, {} recall pools, {} sequences, {} vectors, {} graph edges",
            r.users, r.items, r.pools, r.sequences, r.vectors, r.edges
        );
        sample
    };

    println!(
        "\nreco is up (embedded backends, {}):",
        match &platform {
            Running::Processes(_) => "one process per service".to_string(),
            Running::InProcess(p) =>
                format!("all services in this process, called {}", p.wiring.as_str()),
        }
    );
    for (name, addr) in a.all() {
        println!("  {name:<14} {addr}");
    }
    println!("\ntry:");
    println!(
        "  grpcurl -plaintext -d '{{\"user_id\": \"{sample_user}\"}}' {} reco.gateway.v1.Gateway/Recommend",
        a.gateway
    );
    println!("  grpcurl -plaintext {} list", a.gateway);
    println!(
        "  cargo run -q -p reco-cli -- recommend --gateway {} --user {sample_user}",
        a.gateway
    );

    println!("\nrecommendations for {sample_user}:");
    let req = RecommendRequest {
        user_id: sample_user,
        ..Default::default()
    };
    match recommend(&a.gateway.to_string(), req).await {
        Ok(text) => print!("{text}"),
        Err(e) => eprintln!("the sample recommendation failed: {e:#}"),
    }

    if !args.once {
        println!("\nserving; Ctrl-C to stop");
        reco_server::shutdown_signal().await;
    }
    match platform {
        Running::InProcess(p) => p.shutdown().await,
        Running::Processes(p) => {
            p.shutdown(Duration::from_secs(10));
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Serve { service, args } = &cli.command {
        // The service sets up its own telemetry, under its own name.
        return reco_cli::serve::serve(service, args).await;
    }
    if let Command::Ingest { args } = &cli.command {
        return reco_cli::serve::serve("ingest", args).await;
    }
    let _telemetry = reco_telemetry::init("reco", &cli.telemetry)?;
    match cli.command {
        Command::Serve { .. } | Command::Ingest { .. } => unreachable!("handled above"),
        Command::Up(args) => up(args).await,
        Command::Eval(args) => eval(args).await,
        Command::Sync(args) => sync(args).await,
        Command::Train(args) => train(args).await,
        Command::Bench(args) => bench(args).await,
        Command::BenchEvents(args) => {
            let data = args.data.load()?;
            let r = reco_cli::events_bench::run(&reco_cli::events_bench::EventsBench {
                gateway: args.gateway_addr,
                cache: args.cache_addr,
                kinesis_endpoint: args.kinesis_endpoint_url,
                region: args.kinesis_region,
                shards: args.shards,
                events: args.events,
                samples: args.samples,
                poll_ms: args.poll_ms,
                check_ms: args.check_ms,
                items: data.items.iter().map(|i| i.id.clone()).collect(),
            })
            .await?;
            print!("{}", r.table());
            if args.json {
                println!("{}", r.json());
            }
            Ok(())
        }
        Command::Recommend(args) => {
            let req = RecommendRequest {
                user_id: args.user,
                count: args.count,
                include_graph: args.graph,
                bypass_cache: args.bypass_cache,
                ..Default::default()
            };
            print!("{}", recommend(&args.gateway, req).await?);
            Ok(())
        }
    }
}
