//! Compiles 1,000 journey files (the shipped journeys, renamed) with the shipped templates,
//! `sales.yaml` and `scoring.yaml`, and prints the time. Run: `cargo bench --bench compile`.

use nurture::journey::{SourceFile, Sources, compile};
use std::path::Path;
use std::time::Instant;

fn read_dir(dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_dir(&path, out);
        } else {
            out.push(SourceFile {
                path: path.display().to_string(),
                text: std::fs::read_to_string(&path).unwrap(),
            });
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut shipped = Vec::new();
    read_dir(&root.join("journeys"), &mut shipped);
    let mut templates = Vec::new();
    read_dir(&root.join("templates"), &mut templates);
    let read = |name: &str| SourceFile {
        path: name.into(),
        text: std::fs::read_to_string(root.join(name)).unwrap(),
    };
    let count = 1000;
    let journeys: Vec<SourceFile> = (0..count)
        .map(|i| {
            let original = &shipped[i % shipped.len()];
            let id_line = original.text.lines().find(|l| l.starts_with("id:")).unwrap();
            SourceFile {
                path: format!("journeys/generated-{i}.yaml"),
                text: original.text.replacen(id_line, &format!("id: generated-{i}"), 1),
            }
        })
        .collect();
    let sources = Sources {
        journeys,
        templates,
        sales: Some(read("sales.yaml")),
        scoring: Some(read("scoring.yaml")),
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (catalog, diagnostics) = compile(&sources);
        times.push(started.elapsed());
        assert_eq!(catalog.journeys.len(), count, "{diagnostics:?}");
    }
    times.sort();
    println!(
        "compile {count} journeys: best {:?}, median {:?} ({:.0} journeys/s)",
        times[0],
        times[2],
        count as f64 / times[2].as_secs_f64()
    );
}
