//! Every text_similarity metric against the Python reference libraries (fixture written
//! by scripts/grader_reference.py), to 1e-6.

use lathe::graders::similarity::{self, BleuSmoothing};
use serde_json::Value;

const FIXTURE: &str = include_str!("../fixtures/grader_reference.jsonl");
const TOLERANCE: f64 = 1e-6;

fn ours(metric: &str, input: &str, reference: &str) -> f64 {
    use similarity::{bleu, fuzzy_match, gleu, meteor, rouge_l, rouge_n};
    match metric {
        "fuzzy_match" => fuzzy_match(input, reference),
        "bleu" => bleu(input, reference, BleuSmoothing::Method4),
        "bleu_method0" => bleu(input, reference, BleuSmoothing::None),
        "bleu_method1" => bleu(input, reference, BleuSmoothing::Method1),
        "gleu" => gleu(input, reference),
        "meteor" => meteor(input, reference),
        "rouge_l" => rouge_l(input, reference, false),
        "rouge_l_stem" => rouge_l(input, reference, true),
        other => {
            let stem = other.ends_with("_stem");
            let n = other
                .trim_start_matches("rouge_")
                .trim_end_matches("_stem")
                .parse()
                .unwrap_or_else(|_| panic!("unknown metric {other}"));
            rouge_n(input, reference, n, stem)
        }
    }
}

#[test]
fn every_metric_matches_the_python_libraries() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in FIXTURE.lines() {
        let row: Value = serde_json::from_str(line).expect("fixture line is JSON");
        let Some(scores) = row.get("scores").and_then(Value::as_object) else {
            continue;
        };
        let input = row["input"].as_str().expect("input");
        let reference = row["reference"].as_str().expect("reference");
        for (metric, expected) in scores {
            let expected = expected.as_f64().expect("score is a number");
            let got = ours(metric, input, reference);
            checked += 1;
            if (got - expected).abs() > TOLERANCE {
                failures.push(format!(
                    "{metric}({input:?}, {reference:?}) = {got}, python says {expected}"
                ));
            }
        }
    }
    assert!(checked > 3000, "only {checked} scores checked");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn porter_stemmer_matches_nltk() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in FIXTURE.lines() {
        let row: Value = serde_json::from_str(line).expect("fixture line is JSON");
        let (Some(word), Some(stem)) = (
            row.get("porter").and_then(Value::as_str),
            row.get("stem").and_then(Value::as_str),
        ) else {
            continue;
        };
        checked += 1;
        let got = similarity::porter_stem(word);
        if got != stem {
            failures.push(format!("stem({word:?}) = {got:?}, nltk says {stem:?}"));
        }
    }
    assert!(checked > 500);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
