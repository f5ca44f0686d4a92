//! The site: two lines sharing orders, failures and repairs, orders moved between lines.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use plant_model::{Plant, PlantCommand};
use plant_sim::site::{self, OrderSpec, Site, SiteOptions};
use plant_sim::{DEFAULT_START_MS, Sim, SimError};

fn order(id: &str, bottles: f64, release_s: u64, due_s: u64) -> OrderSpec {
    OrderSpec {
        id: id.into(),
        bottles,
        release_s,
        due_s,
    }
}

fn nominal(lines: usize) -> SiteOptions {
    SiteOptions {
        repair_delay_s: 4 * 3600,
        wear: vec![1.0; lines],
    }
}

#[test]
fn orders_are_drawn_per_seed_with_due_dates_after_release_at_the_asked_load() {
    let a = site::orders(7, 48.0, 2, 0.85);
    assert_eq!(a, site::orders(7, 48.0, 2, 0.85));
    assert_ne!(a, site::orders(8, 48.0, 2, 0.85));
    let ids: std::collections::HashSet<&str> = a.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids.len(), a.len());
    for o in &a {
        assert!(o.due_s > o.release_s + 3600, "{o:?}");
        assert!((15_000.0..=75_000.0).contains(&o.bottles), "{o:?}");
        assert!(o.release_s < 48 * 3600);
    }
    // About 85 % of two lines' nominal capacity over 48 h, within the draw's spread.
    let asked: f64 = a.iter().map(|o| o.bottles).sum();
    let capacity = 2.0 * 48.0 * site::NOMINAL_BOTTLES_PER_H;
    assert!(
        (0.6..1.1).contains(&(asked / capacity)),
        "{}",
        asked / capacity
    );
    // The options: one fast-wearing line out of two.
    let o = SiteOptions::two_lines(3);
    assert_eq!(o.wear.len(), 2);
    assert_eq!(o.wear.iter().filter(|w| **w == 1.0).count(), 1);
    assert!(o.wear.iter().all(|w| (1.0..=6.0).contains(w)));
}

#[test]
fn every_good_bottle_goes_to_the_order_at_the_head_and_orders_finish_in_due_order() {
    let plant = Plant::reference();
    // All released at once onto line1 (the least loaded when each arrives is line1, then
    // line2, alternately): due dates out of release order.
    let orders = vec![
        order("late-due", 20_000.0, 10, 20 * 3600),
        order("early-due", 20_000.0, 10, 3 * 3600),
        order("mid-due", 20_000.0, 10, 6 * 3600),
    ];
    let mut site = Site::new(&plant, 1, DEFAULT_START_MS, nominal(2), orders).unwrap();
    for _ in 0..4 * 3600 {
        site.step();
    }
    let done = site.completed();
    assert_eq!(done.len(), 3, "{done:?}");
    // line1 took two of them and filled them earliest due first.
    let line1: Vec<&str> = done
        .iter()
        .filter(|c| c.line == "line1")
        .map(|c| c.order.as_str())
        .collect();
    assert_eq!(line1.len(), 2, "{done:?}");
    let due = |id: &str| done.iter().find(|c| c.order == id).unwrap().due_s;
    assert!(due(line1[0]) < due(line1[1]));
    // Conservation: what the lines filled went to orders or to no order, nothing else.
    for l in site.lines() {
        let truth = l.sim().truth();
        assert!(
            (l.order_bottles + l.unassigned_bottles - truth.good_bottles).abs() < 1e-3,
            "{} {} {}",
            l.order_bottles,
            l.unassigned_bottles,
            truth.good_bottles
        );
    }
    let k = site.kpis();
    assert_eq!(k.orders_released, 3);
    assert_eq!(k.orders_completed, 3);
    assert_eq!(k.orders_late, 0);
    assert!((k.order_bottles - 60_000.0).abs() < 1e-3);
}

#[test]
fn a_failed_pump_stops_its_line_for_the_repair_delay_and_the_bearing_change() {
    let plant = Plant::reference();
    // Line 1's bearing wears 40 times faster than nominal: it fails within hours.
    let options = SiteOptions {
        repair_delay_s: 3 * 3600,
        wear: vec![40.0, 1.0],
    };
    let orders = vec![order("big", 1_000_000.0, 1, 48 * 3600)];
    let mut site = Site::new(&plant, 2, DEFAULT_START_MS, options, orders).unwrap();
    let mut failed_at = None;
    let mut back_at = None;
    for _ in 0..30 * 3600 {
        site.step();
        let l = &site.lines()[0];
        if failed_at.is_none() && l.failures == 1 {
            failed_at = Some(site.elapsed_s());
        }
        let t = l.sim().truth();
        if let Some(f) = failed_at
            && back_at.is_none()
            && !t.in_maintenance
            && !t.pump_failed
            && site.elapsed_s() > f + 60
        {
            back_at = Some(site.elapsed_s());
        }
    }
    let (failed_at, back_at) = (failed_at.expect("line1 fails"), back_at.expect("repaired"));
    // Three hours' call-out and two hours' bearing change.
    assert!(
        (back_at - failed_at).abs_diff(5 * 3600) <= 2,
        "{failed_at} {back_at}"
    );
    let k = site.kpis();
    assert!(k.failures >= 1);
    assert!(k.unplanned_down_h >= 5.0 - 1e-3, "{k:?}");
    assert_eq!(k.planned_maintenance, 0);
    assert!(
        (k.bottles_lost_to_failures - k.unplanned_down_h * site::NOMINAL_BOTTLES_PER_H).abs() < 1.0
    );
    // A planned bearing change on line 2 counts as planned.
    site.apply("line2", &PlantCommand::Maintenance).unwrap();
    for _ in 0..3 * 3600 {
        site.step();
    }
    let k2 = site.kpis();
    assert_eq!(k2.planned_maintenance, 1);
    assert!((k2.planned_down_h - 2.0).abs() < 0.01, "{k2:?}");
}

#[test]
fn an_order_moves_with_what_remains_of_it_and_unknown_moves_are_refused() {
    let plant = Plant::reference();
    let orders = vec![
        order("a", 30_000.0, 1, 10 * 3600),
        order("b", 30_000.0, 2, 12 * 3600),
    ];
    let mut site = Site::new(&plant, 3, DEFAULT_START_MS, nominal(2), orders).unwrap();
    for _ in 0..1800 {
        site.step();
    }
    // Half an hour in, line1 has filled about half of "a".
    let a = site.line("line1").unwrap().queue().next().unwrap().clone();
    assert_eq!(a.order, "a");
    assert!(
        a.started && a.remaining < 20_000.0 && a.remaining > 10_000.0,
        "{a:?}"
    );
    let take = PlantCommand::TakeOrder {
        order: "a".into(),
        from_line: "line1".into(),
    };
    site.apply("line2", &take).unwrap();
    assert_eq!(site.line("line1").unwrap().queue().count(), 0);
    let moved: Vec<_> = site.line("line2").unwrap().queue().cloned().collect();
    // "a" is due before "b" but "b" is started: "a" waits behind it, with its remainder.
    assert_eq!(moved.len(), 2);
    assert_eq!(moved[0].order, "b");
    assert_eq!(moved[1].order, "a");
    assert!((moved[1].remaining - a.remaining).abs() < 1e-9);
    assert!(!moved[1].started);
    // Moving it again from line1, where it no longer is: refused, naming the order.
    let again = site.apply("line2", &take).unwrap_err();
    assert!(again.to_string().contains("\"a\"") && again.to_string().contains("not on line1"));
    let same = site
        .apply(
            "line2",
            &PlantCommand::TakeOrder {
                order: "a".into(),
                from_line: "line2".into(),
            },
        )
        .unwrap_err();
    assert!(same.to_string().contains("already on line2"), "{same}");
    let nowhere = site.apply("line9", &take).unwrap_err();
    assert_eq!(nowhere, SimError::UnknownLine("line9".into()));
    assert_eq!(nowhere.to_string(), "the site has no line \"line9\"");
    // A single line has no order book.
    let mut sim = Sim::new(&plant, 1, DEFAULT_START_MS).unwrap();
    assert_eq!(sim.apply(&take), Err(SimError::NoOrderBook("a".into())));
}
