//! The search's decisions, free of I/O: which candidate to improve next
//! (GEPA's Pareto selection), which items make a minibatch or a set of
//! demonstrations, what the reflection model is asked and how its answer is
//! read, how a prompt is assembled, and the paired comparison at the end.
//! Every random choice comes from the run's seed and the step, so a resumed
//! run makes the choices it would have made.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde_json::{Value, json};

use super::model::{Candidate, Comparison};

/// The random stream of step `step` of a run seeded with `seed`.
pub fn rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The candidate to improve: one of those that score best on at least one
/// validation item (the Pareto front), drawn in proportion to how many
/// items it is best on; among candidates equal on every item, the oldest
/// stands for them. The original when no candidate scores above 0.
pub fn pareto_parent(candidates: &[Candidate], rng: &mut StdRng) -> usize {
    let items = candidates.first().map_or(0, |c| c.scores.len());
    let mut wins = vec![0usize; candidates.len()];
    for i in 0..items {
        let best = candidates.iter().map(|c| c.scores[i]).fold(f64::MIN, f64::max);
        if best <= 0.0 {
            continue;
        }
        // The first candidate with the best score wins the item: a later
        // copy of it adds nothing to the front.
        if let Some(winner) = candidates.iter().position(|c| c.scores[i] == best) {
            wins[winner] += 1;
        }
    }
    let front: Vec<usize> = (0..candidates.len()).filter(|&c| wins[c] > 0).collect();
    if front.is_empty() {
        return 0;
    }
    let weighted: Vec<usize> = front.iter().flat_map(|&c| std::iter::repeat_n(c, wins[c])).collect();
    *weighted.choose(rng).unwrap_or(&0)
}

/// `size` distinct indices of `0..n` (all of them when `n <= size`), in
/// drawn order.
pub fn sample(n: u64, size: usize, rng: &mut StdRng) -> Vec<u64> {
    let mut all: Vec<u64> = (0..n).collect();
    all.shuffle(rng);
    all.truncate(size);
    all
}

/// Draws `k` demonstrations from the eligible training items (those with a
/// reference answer).
pub fn demos(eligible: &[u64], k: usize, rng: &mut StdRng) -> Vec<u64> {
    let mut picked: Vec<u64> = eligible.choose_multiple(rng, k.min(eligible.len())).copied().collect();
    picked.sort_unstable();
    picked
}

/// One answer that fell short, for the reflection model.
pub struct Failure {
    pub input: Vec<Value>,
    pub output: String,
    pub score: f64,
    /// What the graders said went wrong (their names and scores, errors).
    pub feedback: String,
    pub reference: Option<String>,
}

/// What the reflection model is asked: better instructions, given the
/// current ones and answers that fell short.
pub fn reflection_messages(instructions: &str, failures: &[Failure]) -> Vec<Value> {
    let mut text = String::from(
        "You improve the instructions given to an assistant. Below are its current instructions \
         and examples where its answers scored low. Work out what the examples need that the \
         instructions do not say, then write complete new instructions.\n\n",
    );
    text.push_str("Current instructions:\n<instructions>\n");
    text.push_str(instructions);
    text.push_str("\n</instructions>\n");
    for (i, f) in failures.iter().enumerate() {
        text.push_str(&format!("\nExample {}\nInput:\n", i + 1));
        for m in &f.input {
            let role = m["role"].as_str().unwrap_or("user");
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push_str(&format!("[{role}] {content}\n"));
        }
        text.push_str(&format!("Answer: {}\nScore: {:.3}\n", f.output, f.score));
        if !f.feedback.is_empty() {
            text.push_str(&format!("Grading: {}\n", f.feedback));
        }
        if let Some(reference) = &f.reference {
            text.push_str(&format!("Expected: {reference}\n"));
        }
    }
    text.push_str("\nAnswer with the new instructions only, between <instructions> and </instructions>.");
    vec![json!({"role": "user", "content": text})]
}

/// The instructions in a reflection model's answer: what is between the
/// last `<instructions>` and the `</instructions>` after it, or the whole
/// answer when it has no tags. None when that is empty or unchanged.
pub fn read_instructions(answer: &str, current: &str) -> Option<String> {
    let inner = match answer.rfind("<instructions>") {
        Some(start) => {
            let rest = &answer[start + "<instructions>".len()..];
            rest.split("</instructions>").next().unwrap_or(rest)
        }
        None => answer,
    };
    let inner = inner.trim();
    (!inner.is_empty() && inner != current.trim()).then(|| inner.to_string())
}

/// The prompt for one item: the instructions as a system message (when
/// any), each demonstration's rendered messages and reference answer, then
/// the item's rendered messages.
pub fn assemble(instructions: &str, demos: &[(Vec<Value>, String)], input: Vec<Value>) -> Vec<Value> {
    let mut messages = Vec::with_capacity(1 + demos.len() * 2 + input.len());
    if !instructions.trim().is_empty() {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    for (demo_input, answer) in demos {
        messages.extend(demo_input.iter().cloned());
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    messages.extend(input);
    messages
}

/// The best candidate: the highest mean validation score; the oldest among
/// equals (so the original wins ties).
pub fn best(candidates: &[Candidate]) -> usize {
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if c.mean() > candidates[best].mean() {
            best = i;
        }
    }
    best
}

/// The original against the best on the same items.
pub fn compare(dataset_id: &str, original: (&[f64], &[bool]), best: (&[f64], &[bool])) -> Comparison {
    let n = original.0.len().min(best.0.len());
    let diffs: Vec<f64> = (0..n).map(|i| best.0[i] - original.0[i]).collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let d = mean(&diffs);
    let half = if n > 1 {
        let var = diffs.iter().map(|x| (x - d).powi(2)).sum::<f64>() / (n - 1) as f64;
        1.96 * (var / n as f64).sqrt()
    } else {
        0.0
    };
    let (mut only_original, mut only_best) = (0u64, 0u64);
    for i in 0..n {
        match (original.1[i], best.1[i]) {
            (true, false) => only_original += 1,
            (false, true) => only_best += 1,
            _ => {}
        }
    }
    Comparison {
        dataset_id: dataset_id.to_string(),
        items: n as u64,
        original_mean: mean(&original.0[..n]),
        best_mean: mean(&best.0[..n]),
        mean_difference: d,
        ci_low: d - half,
        ci_high: d + half,
        original_passed: original.1[..n].iter().filter(|p| **p).count() as u64,
        best_passed: best.1[..n].iter().filter(|p| **p).count() as u64,
        mcnemar_p: crate::evals::stats::mcnemar_exact(only_original, only_best),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimize::model::Origin;

    fn cand(scores: &[f64]) -> Candidate {
        Candidate {
            instructions: String::new(),
            demos: Vec::new(),
            origin: Origin::Given,
            parent: None,
            scores: scores.to_vec(),
            passed: scores.iter().map(|s| *s >= 1.0).collect(),
        }
    }

    #[test]
    fn the_parent_comes_from_the_front_in_proportion_to_its_wins() {
        // 0 wins nothing (dominated), 1 wins items 0-2, 2 wins item 3, and 3
        // is a copy of 1 that adds nothing.
        let pool = [
            cand(&[0.0, 0.0, 0.0, 0.0]),
            cand(&[1.0, 1.0, 1.0, 0.0]),
            cand(&[0.0, 0.0, 0.5, 1.0]),
            cand(&[1.0, 1.0, 1.0, 0.0]),
        ];
        let mut counts = [0usize; 4];
        let mut r = rng(7, 0);
        for _ in 0..4000 {
            counts[pareto_parent(&pool, &mut r)] += 1;
        }
        assert_eq!((counts[0], counts[3]), (0, 0), "{counts:?}");
        let share = counts[1] as f64 / 4000.0;
        assert!((0.70..0.80).contains(&share), "{counts:?}");
        assert_eq!(pareto_parent(&[cand(&[0.0, 0.0])], &mut r), 0);
    }

    #[test]
    fn choices_repeat_for_a_seed_and_step() {
        assert_eq!(sample(50, 8, &mut rng(3, 4)), sample(50, 8, &mut rng(3, 4)));
        assert_ne!(sample(50, 8, &mut rng(3, 4)), sample(50, 8, &mut rng(3, 5)));
        let s = sample(5, 8, &mut rng(1, 1));
        assert_eq!(s.len(), 5);
        let d = demos(&[2, 4, 6, 8, 10], 3, &mut rng(1, 2));
        assert_eq!(d.len(), 3);
        assert!(d.windows(2).all(|w| w[0] < w[1]) && d.iter().all(|x| x % 2 == 0));
    }

    #[test]
    fn reflection_answers_are_read_between_their_tags() {
        assert_eq!(
            read_instructions(
                "Thinking...\n<instructions>\nAnswer with the label only.\n</instructions>",
                "x"
            ),
            Some("Answer with the label only.".into())
        );
        assert_eq!(read_instructions("  Be terse. ", "x"), Some("Be terse.".into()));
        assert_eq!(
            read_instructions("<instructions> x </instructions>", "x"),
            None,
            "unchanged"
        );
        assert_eq!(read_instructions("<instructions></instructions>", "x"), None);
        let asked = reflection_messages(
            "Classify.",
            &[Failure {
                input: vec![json!({"role": "user", "content": "card lost"})],
                output: "hello".into(),
                score: 0.0,
                feedback: "exact: 0".into(),
                reference: Some("lost_card".into()),
            }],
        );
        let text = asked[0]["content"].as_str().unwrap();
        assert!(
            text.contains("Classify.") && text.contains("[user] card lost") && text.contains("Expected: lost_card")
        );
    }

    #[test]
    fn a_prompt_is_instructions_demonstrations_then_the_item() {
        let demo = (vec![json!({"role": "user", "content": "q1"})], "a1".to_string());
        let m = assemble("Be brief.", &[demo], vec![json!({"role": "user", "content": "q2"})]);
        let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(
            assemble("", &[], vec![json!({"role": "user", "content": "q"})]).len(),
            1
        );
    }

    #[test]
    fn the_comparison_is_paired() {
        let c = compare(
            "ds",
            (&[0.0, 0.0, 1.0, 1.0], &[false, false, true, true]),
            (&[1.0, 1.0, 1.0, 1.0], &[true, true, true, true]),
        );
        assert_eq!((c.items, c.original_passed, c.best_passed), (4, 2, 4));
        assert!((c.mean_difference - 0.5).abs() < 1e-12);
        assert!(c.ci_low < 0.5 && c.ci_high > 0.5);
        assert!((c.mcnemar_p - 0.5).abs() < 1e-12, "{}", c.mcnemar_p);
        let same = compare("ds", (&[1.0], &[true]), (&[1.0], &[true]));
        assert_eq!((same.mean_difference, same.ci_low, same.ci_high), (0.0, 0.0, 0.0));
        assert_eq!(best(&[cand(&[0.5]), cand(&[0.5]), cand(&[0.7])]), 2);
        assert_eq!(best(&[cand(&[0.5]), cand(&[0.5])]), 0, "the original wins ties");
    }
}
