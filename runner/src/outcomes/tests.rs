//! The fixtures are real outputs, captured on 2026-12-02 from Python 3.11.7
//! (`python3 -m unittest discover -s tests -v`), pytest 9.2.0 (`pytest -v
//! -rA`, `--junitxml`), cargo test and cargo-nextest 0.9.143, each running a
//! suite with passing, failing and skipped tests.

use protocol::message::{TestCase, TestStatus};

use super::{bound, junit, Collected, MAX_NAME};

fn from_output(output: &str) -> Vec<(String, TestStatus)> {
    let mut collected = Collected::default();
    collected.add_output(output);
    collected.by_name.into_iter().collect()
}

fn named(expected: &[(&str, TestStatus)]) -> Vec<(String, TestStatus)> {
    let mut expected: Vec<_> = expected.iter().map(|(name, status)| (name.to_string(), *status)).collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    expected
}

use TestStatus::{Failed, Passed, Skipped};

#[test]
fn unittest_verbose() {
    let got = from_output(include_str!("fixtures/unittest.txt"));
    let expected = named(&[
        ("test_mix.Arith.test_add", Passed),
        ("test_mix.Arith.test_broken", Failed),
        ("test_mix.Arith.test_later", Skipped),
        ("test_mix.Arith.test_raises", Failed),
    ]);
    assert_eq!(got, expected);
}

#[test]
fn unittest_before_python_3_11_names_the_class_only() {
    let got = from_output("test_add (test_mix.Arith) ... ok\ntest_x (m.C) ... unexpected success\n");
    assert_eq!(got, named(&[("test_mix.Arith.test_add", Passed), ("m.C.test_x", Failed)]));
}

#[test]
fn pytest_verbose_and_short_summary() {
    let got = from_output(include_str!("fixtures/pytest.txt"));
    let expected = named(&[
        ("tests/test_mix.py::Arith::test_add", Passed),
        ("tests/test_mix.py::Arith::test_broken", Failed),
        ("tests/test_mix.py::Arith::test_later", Skipped),
        ("tests/test_mix.py::Arith::test_raises", Failed),
        ("tests/test_mix.py::test_plain_function", Passed),
        ("tests/test_mix.py::test_plain_fails", Failed),
    ]);
    assert_eq!(got, expected);
}

#[test]
fn cargo_test() {
    let got = from_output(include_str!("fixtures/cargo-test.txt"));
    assert_eq!(got, named(&[("tests::adds", Passed), ("tests::breaks", Failed), ("tests::later", Skipped)]));
}

#[test]
fn nextest_names_each_test_once_with_its_worst_outcome() {
    let got = from_output(include_str!("fixtures/nextest.txt"));
    assert_eq!(got, named(&[("fx tests::adds", Passed), ("fx tests::breaks", Failed)]));
}

#[test]
fn junit_xml_from_pytest() {
    let mut collected = Collected::default();
    junit::parse(include_bytes!("fixtures/junit-pytest.xml"), &mut collected);
    let got: Vec<_> = collected.by_name.into_iter().collect();
    let expected = named(&[
        ("tests.test_mix.Arith.test_add", Passed),
        ("tests.test_mix.Arith.test_broken", Failed),
        ("tests.test_mix.Arith.test_later", Skipped),
        ("tests.test_mix.Arith.test_raises", Failed),
        ("tests.test_mix.test_plain_function", Passed),
        ("tests.test_mix.test_plain_fails", Failed),
    ]);
    assert_eq!(got, expected);
}

#[test]
fn junit_surefire_shape_with_errors_and_broken_xml() {
    let xml = br#"<?xml version="1.0"?>
<testsuite name="com.example.AppTest" tests="3">
  <testcase name="works" classname="com.example.AppTest" time="0.01"/>
  <testcase name="throws" classname="com.example.AppTest"><error type="java.lang.IllegalStateException">x</error></testcase>
  <testcase name="&lt;odd&gt;" classname="com.example.AppTest"><skipped/></testcase>
  <testcase name="cut" classname="com.example.AppTest"><failure>"#;
    let mut collected = Collected::default();
    junit::parse(xml, &mut collected);
    let got: Vec<_> = collected.by_name.into_iter().collect();
    let expected = named(&[
        ("com.example.AppTest.works", Passed),
        ("com.example.AppTest.throws", Failed),
        ("com.example.AppTest.<odd>", Skipped),
    ]);
    assert_eq!(got, expected);
}

#[test]
fn junit_reports_are_found_in_the_tree_but_not_in_git() {
    let tree = tempfile::tempdir().unwrap();
    let reports = tree.path().join("target/surefire-reports");
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::create_dir_all(tree.path().join(".git")).unwrap();
    std::fs::write(reports.join("TEST-com.example.AppTest.xml"), "<testsuite/>").unwrap();
    std::fs::write(tree.path().join("junit.xml"), "<testsuite/>").unwrap();
    std::fs::write(tree.path().join(".git/junit.xml"), "<testsuite/>").unwrap();
    std::fs::write(tree.path().join("report.xml"), "<testsuite/>").unwrap();
    let found: Vec<_> = junit::find_reports(tree.path())
        .into_iter()
        .map(|path| path.strip_prefix(tree.path()).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(found, ["junit.xml", "target/surefire-reports/TEST-com.example.AppTest.xml"]);
}

#[test]
fn noise_names_no_test() {
    let got = from_output(
        "test result: ok. 1 passed\nRan 3 tests in 0.1s\nOK\nsome thing ... ok\nPASSED\nFAILED x\n\
         PASS [ nope ] x\ntest a b ... ok\n    test indented::by_nextest ... ok\n",
    );
    assert_eq!(got, vec![]);
}

#[test]
fn bound_keeps_every_failure_then_fills_up() {
    let tests: Vec<TestCase> = (0..10)
        .map(|idx| TestCase { name: format!("t{idx}"), status: if idx % 3 == 0 { Failed } else { Passed } })
        .collect();
    let kept = bound(tests.clone(), 6);
    let names: Vec<_> = kept.iter().map(|test| test.name.as_str()).collect();
    assert_eq!(names, ["t0", "t3", "t6", "t9", "t1", "t2"]);
    let kept = bound(tests, 2);
    assert_eq!(kept.iter().filter(|test| test.status == Failed).count(), 4);
    assert_eq!(kept.len(), 4);
}

#[test]
fn names_are_cut_and_cleaned() {
    let mut collected = Collected::default();
    collected.add(&format!("{}é", "x".repeat(MAX_NAME - 1)), Failed);
    collected.add("a\u{7}b", Passed);
    let names: Vec<_> = collected.by_name.keys().cloned().collect();
    assert_eq!(names, ["a b".to_string(), "x".repeat(MAX_NAME - 1)]);
}
