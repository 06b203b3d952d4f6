//! The readers on small files written by each test, in every layout, with the faults real files have; and on the
//! real datasets when the test script points at them (`RECO_DATASETS`).

use std::path::{Path, PathBuf};

use reco_data::read::{Format, ReadError, ReadOptions, read};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

const MOVIES: &str = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,\"Heat, The (1995)\",Action|Crime\n3,Nothing,(no genres listed)\n";

fn ratings_with_a_bad_line() -> String {
    let mut s = String::from("userId,movieId,rating,timestamp\n");
    for i in 0..10 {
        s.push_str(&format!(
            "{},{},4.0,{}\n",
            1 + i % 3,
            1 + i % 3,
            1_000_000 + i
        ));
    }
    // Line 12: a rating out of range. Line 13: a missing field.
    s.push_str("1,2,7.5,1000100\n");
    s.push_str("2,3,1000200\n");
    for i in 0..5 {
        s.push_str(&format!("3,{},3.5,{}\n", 1 + i % 3, 2_000_000 + i));
    }
    s
}

#[test]
fn a_bad_line_in_the_middle_is_counted_with_its_line_number_or_stops_a_strict_read() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "movies.csv", MOVIES.as_bytes());
    write(
        dir.path(),
        "ratings.csv",
        ratings_with_a_bad_line().as_bytes(),
    );

    let (data, report) = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap();
    assert_eq!(data.events.len(), 15);
    assert_eq!(report.total_rejected(), 2);
    let lines: Vec<usize> = report.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, [12, 13]);
    assert!(
        report.rejected[0].reason.contains("rating 7.5"),
        "{}",
        report.rejected[0]
    );
    assert!(report.rejected[0].file.ends_with("ratings.csv"));
    assert_eq!(
        data.items
            .iter()
            .find(|i| i.id == "2")
            .unwrap()
            .title
            .as_deref(),
        Some("Heat, The (1995)")
    );
    assert!(
        data.items
            .iter()
            .find(|i| i.id == "3")
            .unwrap()
            .categories
            .is_empty()
    );

    let err = read(dir.path(), Format::Auto, ReadOptions { strict: true }).unwrap_err();
    match err {
        ReadError::Malformed(r) => {
            assert_eq!(r.line, 12);
            assert!(r.file.ends_with("ratings.csv"));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn missing_empty_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap_err();
    assert!(matches!(err, ReadError::Unknown { .. }), "{err}");
    assert!(err.to_string().contains("no known dataset layout"));

    write(
        dir.path(),
        "ratings.csv",
        b"userId,movieId,rating,timestamp\n1,1,4.0,1\n",
    );
    let err = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ReadError::Missing { path, .. } if path.ends_with("movies.csv")),
        "{err}"
    );

    write(dir.path(), "movies.csv", b"");
    let err = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ReadError::Empty { path } if path.ends_with("movies.csv")),
        "{err}"
    );

    write(dir.path(), "movies.csv", b"id;name;kinds\n1;x;y\n");
    let err = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap_err();
    assert!(matches!(err, ReadError::Format { .. }), "{err}");

    let missing = dir.path().join("nope");
    assert!(read(&missing, Format::Auto, ReadOptions::default()).is_err());
}

#[test]
fn movielens_100k_layout_with_latin1_titles_and_demographics() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "u.genre", b"unknown|0\nAction|1\nComedy|2\n\n");
    let mut item = b"1|Caf\xe9 (1995)|01-Jan-1995||http://x|0|1|1\n".to_vec();
    item.extend_from_slice(b"2|Other (1996)|01-Jan-1996||http://y|1|0|0\n");
    write(dir.path(), "u.item", &item);
    write(
        dir.path(),
        "u.user",
        b"1|24|M|technician|85711\n2|53|F|other|94043\n",
    );
    write(
        dir.path(),
        "u.data",
        b"1\t1\t5\t874965758\n2\t2\t3\t876893171\n2\t1\tx\t876893171\n",
    );
    let (data, report) = read(dir.path(), Format::MovieLens, ReadOptions::default()).unwrap();
    assert_eq!(data.events.len(), 2);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].line, 3);
    let cafe = data.items.iter().find(|i| i.id == "1").unwrap();
    assert_eq!(
        cafe.title.as_deref(),
        Some("Café (1995)"),
        "latin-1 decoded"
    );
    assert_eq!(cafe.categories, ["Action", "Comedy"]);
    assert!(
        data.items
            .iter()
            .find(|i| i.id == "2")
            .unwrap()
            .categories
            .is_empty(),
        "'unknown' is no genre"
    );
    let u1 = data.users.iter().find(|u| u.id == "1").unwrap();
    assert_eq!(
        (u1.age, u1.occupation.as_deref()),
        (Some(24), Some("technician"))
    );
}

#[test]
fn movielens_1m_layout() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "movies.dat",
        b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n",
    );
    write(dir.path(), "users.dat", b"1::F::1::10::48067\n");
    write(
        dir.path(),
        "ratings.dat",
        b"1::1::5::978300760\n1::2::3::978302109\n1:2:3\n",
    );
    let (data, report) = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap();
    assert_eq!(data.events.len(), 2);
    assert_eq!(report.total_rejected(), 1);
    assert_eq!(data.events[0].timestamp_ms, 978_300_760_000);
    assert_eq!(data.users[0].gender.as_deref(), Some("F"));
}

#[test]
fn lastfm_layout_with_crlf_latin1_both_way_friends_and_missing_artists() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "artists.dat",
        b"id\tname\turl\tpictureURL\n1\tMALICE MIZER\thttp://a\thttp://p\n2\tDiary\thttp://b\n",
    );
    write(
        dir.path(),
        "tags.dat",
        b"tagID\ttagValue\r\n1\tmetal\r\n2\tj-rock caf\xe9\r\n",
    );
    write(
        dir.path(),
        "user_taggedartists.dat",
        b"userID\tartistID\ttagID\tday\tmonth\tyear\r\n2\t1\t1\t1\t4\t2009\r\n3\t1\t2\t15\t5\t2010\r\n2\t999\t1\t2\t4\t2009\r\n2\t1\t1\t40\t4\t2009\r\n",
    );
    write(
        dir.path(),
        "user_artists.dat",
        b"userID\tartistID\tweight\r\n2\t1\t13883\r\n2\t999\t10\r\n3\t2\t1\r\n",
    );
    write(
        dir.path(),
        "user_friends.dat",
        b"userID\tfriendID\r\n2\t3\r\n3\t2\r\n",
    );
    let (data, report) = read(dir.path(), Format::Auto, ReadOptions::default()).unwrap();
    assert_eq!(data.events.len(), 3);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert_eq!(report.rejected[0].line, 5, "the impossible date");
    assert_eq!(data.follows.len(), 2);
    let missing = data.items.iter().find(|i| i.id == "999").unwrap();
    assert_eq!(
        missing.title, None,
        "an artist absent from artists.dat is still an item"
    );
    let malice = data.items.iter().find(|i| i.id == "1").unwrap();
    assert_eq!(malice.tags, ["j-rock café", "metal"]);
    // The listen of artist 1 by user 2 takes the day of the user's first tag on it.
    let listen = data
        .events
        .iter()
        .find(|e| data.items[e.item].id == "1")
        .unwrap();
    assert_eq!(listen.timestamp_ms, 14_335 * 86_400_000);
}

#[test]
fn json_lines_with_an_unknown_field_and_a_bad_weight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"type\":\"item\",\"id\":\"i1\",\"title\":\"Heat\",\"categories\":[\"crime\"]}\n",
            "{\"type\":\"event\",\"user\":\"u1\",\"item\":\"i1\",\"weight\":4.5,\"timestamp_ms\":5}\n",
            "{\"type\":\"event\",\"user\":\"u1\",\"item\":\"i2\",\"wieght\":1}\n",
            "\n",
            "{\"type\":\"event\",\"user\":\"u2\",\"item\":\"i1\",\"weight\":-1}\n",
            "{\"type\":\"follow\",\"user\":\"u1\",\"followee\":\"u2\"}\n",
            "{\"type\":\"user\",\"id\":\"u1\",\"age\":40}\n",
        ),
    )
    .unwrap();
    let (data, report) = read(&path, Format::Auto, ReadOptions::default()).unwrap();
    assert_eq!(data.events.len(), 1);
    let lines: Vec<usize> = report.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, [3, 5]);
    assert!(
        report.rejected[0].reason.contains("wieght"),
        "{}",
        report.rejected[0]
    );
    assert_eq!(data.follows.len(), 1);
    assert_eq!(data.users[0].age, Some(40));
}

fn dataset(name: &str) -> Option<PathBuf> {
    let Some(root) = std::env::var_os("RECO_DATASETS") else {
        eprintln!(
            "NOT RUN: RECO_DATASETS is not set (scripts/test.sh sets it when ../shared/datasets exists)"
        );
        return None;
    };
    let path = PathBuf::from(root).join(name);
    assert!(
        path.is_dir(),
        "RECO_DATASETS is set but {} is missing",
        path.display()
    );
    Some(path)
}

#[test]
fn the_real_movielens_and_lastfm_files_read_whole() {
    if let Some(ml) = dataset("ml-latest-small") {
        let (data, report) = read(&ml, Format::Auto, ReadOptions { strict: true }).unwrap();
        assert_eq!((data.users.len(), data.events.len()), (610, 100_836));
        assert_eq!(report.total_rejected(), 0);
        assert!(data.items.len() >= 9_742);
    }
    if let Some(lf) = dataset("hetrec2011-lastfm-2k") {
        let (data, report) = read(&lf, Format::Auto, ReadOptions { strict: true }).unwrap();
        assert_eq!((data.users.len(), data.events.len()), (1_892, 92_834));
        assert_eq!(data.follows.len(), 2 * 12_717);
        assert_eq!(report.total_rejected(), 0);
        assert_eq!(
            data.items.len(),
            17_632 + 390,
            "artists absent from artists.dat are kept"
        );
    }
}
