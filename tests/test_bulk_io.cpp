// The bulk captioning I/O of examples/bulk: enumerating directories, JSONL / CSV manifests and
// webdataset tar shards (written here with libarchive), the JSONL / CSV record files (round trips,
// torn last records, resume), sharding and merging.
#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "csv.hpp"
#include "inputs.hpp"
#include "records.hpp"
#include "reference_util.hpp"

namespace fs = std::filesystem;
using namespace instructblip;
using namespace instructblip::bulk;

namespace {

// A fresh directory per test (CTest runs the cases in parallel).
std::string fresh_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string d = ibtest::tmp_dir() + "/bulk_" + info->test_suite_name() + "_" + info->name() + "_" +
                        std::to_string(::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::vector<std::string> ids(const Enumeration& e) {
  std::vector<std::string> v;
  for (const auto& i : e.items) v.push_back(i.id);
  return v;
}

// The message of the InputError `f` throws ("" when it throws none).
template <class F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

struct Member {
  std::string name, data;
  bool directory = false;
};

void write_tar(const std::string& path, const std::vector<Member>& members) {
  ::archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const auto& m : members) {
    ::archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, m.name.c_str());
    archive_entry_set_filetype(e, m.directory ? AE_IFDIR : AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, m.directory ? 0 : la_int64_t(m.data.size()));
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
    if (!m.directory) {
      ASSERT_EQ(archive_write_data(a, m.data.data(), m.data.size()), la_ssize_t(m.data.size()));
    }
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}

std::string bytes_str(const std::vector<std::uint8_t>& b) { return std::string(b.begin(), b.end()); }

}  // namespace

TEST(BulkInputs, DirectoryIsRecursiveSortedByteWiseAndSkipsHiddenAndNonImages) {
  const std::string d = fresh_dir() + "/photos";
  for (const char* f : {"b.jpg", "a/z.PNG", "a/b/c.JpEg", "a.webp", "B.bmp", "x.gif", "y.tga", "p.pnm", "p.ppm",
                        "p.pgm", "p.pbm", "notes.txt", "noext", "archive.jpg.bak", ".hidden.jpg", ".cache/in.jpg",
                        "a/.h/deep.png", "Z/last.jpg"})
    write(d + "/" + f, "x");
  const Enumeration e = enumerate_inputs({d});
  // byte-wise: upper case before lower case, '.' (0x2e) before '/' (0x2f)
  const std::vector<std::string> want = {"B.bmp", "Z/last.jpg", "a.webp",  "a/b/c.JpEg", "a/z.PNG", "b.jpg",
                                         "p.pbm", "p.pgm",      "p.pnm",   "p.ppm",      "x.gif",   "y.tga"};
  std::vector<std::string> want_ids;
  for (const auto& w : want) want_ids.push_back(d + "/" + w);
  EXPECT_EQ(ids(e), want_ids);
  for (std::size_t i = 0; i < e.items.size(); ++i) {
    EXPECT_EQ(e.items[i].index, i);
    EXPECT_EQ(e.items[i].kind, ItemKind::File);
    EXPECT_EQ(e.items[i].path, e.items[i].id);
    EXPECT_FALSE(e.items[i].prompt);
  }
  // a trailing slash does not double
  EXPECT_EQ(enumerate_inputs({d + "/"}).items[0].id, d + "/B.bmp");
}

TEST(BulkInputs, JsonlManifestResolvesPathsIdsAndPrompts) {
  const std::string d = fresh_dir();
  write(d + "/sub/list.jsonl",
        "\xEF\xBB\xBF{\"image\": \"a.jpg\"}\n"
        "\n"
        "{\"image\": \"img/b.png\", \"id\": \"bee\", \"prompt\": \"What is it?\"}\r\n"
        "   \n"
        "{\"id\": 42, \"image\": \"/abs/c.jpg\", \"extra\": [1, 2]}\n"
        "{\"image\": \"d.jpg\", \"prompt\": \"\xC3\xA9t\xC3\xA9, \\\"quoted\\\"\"}");  // no final newline
  const Enumeration e = enumerate_inputs({d + "/sub/list.jsonl"});
  ASSERT_EQ(e.items.size(), 4u);
  EXPECT_EQ(e.items[0].path, d + "/sub/a.jpg");
  EXPECT_EQ(e.items[0].id, d + "/sub/a.jpg");  // default id: the resolved path
  EXPECT_FALSE(e.items[0].prompt);
  EXPECT_EQ(e.items[1].id, "bee");
  EXPECT_EQ(e.items[1].path, d + "/sub/img/b.png");
  EXPECT_EQ(*e.items[1].prompt, "What is it?");
  EXPECT_EQ(e.items[2].id, "42");
  EXPECT_EQ(e.items[2].path, "/abs/c.jpg");
  EXPECT_EQ(*e.items[3].prompt, "\xC3\xA9t\xC3\xA9, \"quoted\"");
  EXPECT_EQ(e.items[3].where, d + "/sub/list.jsonl:6");
}

TEST(BulkInputs, MalformedJsonlLinesNameFileAndLine) {
  const std::string d = fresh_dir();
  const std::string good = "{\"image\": \"a.jpg\"}\n\n";  // lines 1-2; the bad line is line 3
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json at all", "not JSON"},
      {"{\"image\": \"a.jpg\"", "not JSON"},
      {"[\"a.jpg\"]", "not a JSON object"},
      {"{\"id\": \"x\"}", "no \"image\""},
      {"{\"image\": 3}", "\"image\""},
      {"{\"image\": \"\"}", "\"image\""},
      {"{\"image\": \"b.jpg\", \"id\": 1.5}", "\"id\""},
      {"{\"image\": \"b.jpg\", \"id\": true}", "\"id\""},
      {"{\"image\": \"b.jpg\", \"prompt\": 7}", "\"prompt\""},
      {"{\"image\": \"b.jpg\", \"id\": \"" + d + "/a.jpg\"}", "duplicate id"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string path = d + "/bad" + std::to_string(i) + ".jsonl";
    write(path, good + cases[i].first + "\n{\"image\": \"z.jpg\"}\n");
    try {
      enumerate_inputs({path});
      ADD_FAILURE() << cases[i].first << ": accepted";
    } catch (const InputError& e) {
      EXPECT_EQ(e.file, path);
      EXPECT_EQ(e.line, 3u) << cases[i].first;
      EXPECT_NE(std::string(e.what()).find(path + ":3: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(cases[i].second), std::string::npos) << e.what();
    }
  }
}

TEST(BulkInputs, CsvManifestFollowsRfc4180) {
  const std::string d = fresh_dir();
  write(d + "/m.csv",
        "\xEF\xBB\xBF" "extra,image,prompt,id\r\n"
        "1,a.jpg,\"Describe, briefly\",first\r\n"
        "2,\"b c.jpg\",\"line one\nline \"\"two\"\"\",\r\n"  // empty id column -> error? no: see below
        "3,/abs/d.png,plain,third\n");
  // an empty id is refused (the record starts on line 3)
  const std::string err = input_error([&] { enumerate_inputs({d + "/m.csv"}); });
  EXPECT_NE(err.find(d + "/m.csv:3: "), std::string::npos) << err;
  EXPECT_NE(err.find("\"id\""), std::string::npos) << err;

  write(d + "/m.csv",
        "\xEF\xBB\xBF" "extra,image,prompt,id\r\n"
        "1,a.jpg,\"Describe, briefly\",first\r\n"
        "\r\n"
        "2,\"b c.jpg\",\"line one\nline \"\"two\"\"\",second\r\n"
        "3,/abs/d.png,plain,third");  // no final line break
  const Enumeration e = enumerate_inputs({d + "/m.csv"});
  ASSERT_EQ(e.items.size(), 3u);
  EXPECT_EQ(e.items[0].id, "first");
  EXPECT_EQ(e.items[0].path, d + "/a.jpg");
  EXPECT_EQ(*e.items[0].prompt, "Describe, briefly");
  EXPECT_EQ(e.items[1].path, d + "/b c.jpg");
  EXPECT_EQ(*e.items[1].prompt, "line one\nline \"two\"");
  EXPECT_EQ(e.items[1].where, d + "/m.csv:4");
  EXPECT_EQ(e.items[2].path, "/abs/d.png");
  EXPECT_EQ(e.items[2].where, d + "/m.csv:6");  // the quoted line break counts

  // without id / prompt columns: the id is the resolved path, no prompt
  write(d + "/p.csv", "image\nx.jpg\n");
  const Enumeration p = enumerate_inputs({d + "/p.csv"});
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_EQ(p.items[0].id, d + "/x.jpg");
  EXPECT_FALSE(p.items[0].prompt);
}

TEST(BulkInputs, MalformedCsvRecordsNameFileAndLine) {
  const std::string d = fresh_dir();
  struct Case {
    std::string text;
    std::size_t line;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"id,prompt\nx,y\n", 1, "no \"image\" column"},
      {"", 1, "no header"},
      {"image,id\na.jpg,1\n\"b.jpg,2\n", 3, "not closed"},
      {"image,id\na.jpg,1\n\"b\"x.jpg,2\n", 3, "after a closing quote"},
      {"image,id\na.jpg,1\nb.jpg,2,3\n", 3, "3 fields"},
      {"image,id\na.jpg,1\nb.jpg\n", 3, "1 fields"},
      {"image,id\na.jpg,1\n,2\n", 3, "empty \"image\""},
      {"image,id\n\"a\nb.jpg\",1\nc.jpg,1\n", 4, "duplicate id '1'"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string path = d + "/bad" + std::to_string(i) + ".csv";
    write(path, cases[i].text);
    try {
      enumerate_inputs({path});
      ADD_FAILURE() << cases[i].text << ": accepted";
    } catch (const InputError& e) {
      EXPECT_EQ(e.line, cases[i].line) << cases[i].text << " -> " << e.what();
      EXPECT_NE(std::string(e.what()).find(path + ":" + std::to_string(cases[i].line) + ": "), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find(cases[i].needle), std::string::npos) << e.what();
    }
  }
}

TEST(BulkInputs, OtherInputsAndDuplicateIdsAcrossInputsAreRefused) {
  const std::string d = fresh_dir();
  EXPECT_NE(input_error([&] { enumerate_inputs({d + "/missing"}); }).find("no such file"), std::string::npos);
  write(d + "/a.txt", "x");
  EXPECT_NE(input_error([&] { enumerate_inputs({d + "/a.txt"}); }).find("not a directory"), std::string::npos);
  write(d + "/img/a.jpg", "x");
  write(d + "/m.jsonl", "{\"image\": \"img/a.jpg\"}\n");
  const std::string err = input_error([&] { enumerate_inputs({d + "/img", d + "/m.jsonl"}); });
  EXPECT_NE(err.find(d + "/m.jsonl:1: duplicate id '" + d + "/img/a.jpg'"), std::string::npos) << err;
  EXPECT_NE(err.find("first at " + d + "/img"), std::string::npos) << err;
  // several inputs: enumerated in the order given, indices continue
  write(d + "/n.jsonl", "{\"image\": \"other.jpg\"}\n");
  const Enumeration e = enumerate_inputs({d + "/n.jsonl", d + "/img"});
  ASSERT_EQ(e.items.size(), 2u);
  EXPECT_EQ(e.items[0].id, d + "/other.jpg");
  EXPECT_EQ(e.items[1].id, d + "/img/a.jpg");
  EXPECT_EQ(e.items[1].index, 1u);
}

TEST(BulkInputs, TarShardGroupsMembersIntoSamplesAndStreamsTheirImages) {
  const std::string d = fresh_dir();
  const std::string tar = d + "/shard-000.tar";
  const std::string big(5000, 'B');
  write_tar(tar, {{"data", "", true},
                  {"data/._000.jpg", "resource fork"},
                  {"data/000.jpg", "JPEG-0"},
                  {"data/000.txt", "a caption, with \"quotes\""},
                  {"data/000.json", "{\"width\": 640, \"tags\": [\"a\"]}"},
                  {"data/001.json", "not json {"},
                  {"data/001.PNG", "PNG-1"},
                  {"data/002.txt", "no image here"},
                  {"data/003.webp", "WEBP-3"},
                  {"data/003.jpeg", "JPEG-3"},
                  {"data/003.seg.png", "SEG-3"},
                  {"data/004.jpg", big},
                  {"data.v2/005.jpg", "JPEG-5"}});
  const Enumeration e = enumerate_inputs({tar});
  EXPECT_TRUE(e.warnings.empty());
  ASSERT_EQ(e.items.size(), 6u);
  const std::vector<std::string> want = {tar + "/data/000", tar + "/data/001", tar + "/data/002",
                                         tar + "/data/003", tar + "/data/004", tar + "/data.v2/005"};
  EXPECT_EQ(ids(e), want);
  for (const auto& i : e.items) {
    EXPECT_EQ(i.kind, ItemKind::TarMember);
    EXPECT_EQ(i.path, tar);
  }
  EXPECT_EQ(e.items[0].key, "data/000");
  EXPECT_EQ(e.items[0].member, "data/000.jpg");
  EXPECT_EQ(*e.items[0].txt, "a caption, with \"quotes\"");
  EXPECT_EQ(e.items[0].json->dump(), "{\"width\":640,\"tags\":[\"a\"]}");  // parsed, keys in file order
  EXPECT_EQ(e.items[1].member, "data/001.PNG");
  EXPECT_EQ(*e.items[1].json, "not json {");  // the raw string
  EXPECT_FALSE(e.items[1].txt);
  EXPECT_EQ(e.items[2].member, "");           // no image member
  EXPECT_EQ(*e.items[2].txt, "no image here");
  EXPECT_EQ(e.items[3].member, "data/003.jpeg");  // jpg > jpeg > png > webp; seg.png is not an image member
  EXPECT_EQ(e.items[4].member_size, big.size());

  // one streaming pass; skipped samples are passed over
  TarImageReader r(tar);
  EXPECT_EQ(bytes_str(r.read(e.items[0], 0)), "JPEG-0");
  EXPECT_EQ(bytes_str(r.read(e.items[3], 0)), "JPEG-3");
  EXPECT_THROW(r.read(e.items[4], 4999), InvalidArgument);  // larger than the limit: not read
  EXPECT_EQ(bytes_str(r.read(e.items[5], 4999)), "JPEG-5");
  EXPECT_THROW(r.read(e.items[1], 0), IoError);  // behind the stream: not found

  TarImageReader again(tar);
  EXPECT_EQ(bytes_str(again.read(e.items[4], 0)), big);
}

TEST(BulkInputs, TruncatedTarKeepsWhatPrecedesAndFailsTheRestClearly) {
  const std::string d = fresh_dir();
  const std::string tar = d + "/cut.tar";
  std::vector<Member> members;
  for (int i = 0; i < 4; ++i) members.push_back({"s" + std::to_string(i) + ".jpg", std::string(3000, char('a' + i))});
  write_tar(tar, members);
  const std::string full = slurp(tar);
  // pax headers + 512-byte blocks: cut inside the third sample's data
  const std::size_t third = full.find(std::string(3000, 'c'));
  ASSERT_NE(third, std::string::npos);
  write(tar, full.substr(0, third + 1000));

  const Enumeration e = enumerate_inputs({tar});
  ASSERT_EQ(e.warnings.size(), 1u);
  EXPECT_NE(e.warnings[0].find(tar + ": the tar shard ends early"), std::string::npos) << e.warnings[0];
  ASSERT_EQ(e.items.size(), 3u);  // the third sample's header was read, its data is cut
  EXPECT_EQ(e.items[0].id, tar + "/s0");
  EXPECT_EQ(e.items[1].id, tar + "/s1");

  TarImageReader r(tar);
  EXPECT_EQ(bytes_str(r.read(e.items[0], 0)), std::string(3000, 'a'));
  EXPECT_EQ(bytes_str(r.read(e.items[1], 0)), std::string(3000, 'b'));
  try {
    r.read(e.items[2], 0);
    ADD_FAILURE() << "a truncated member was read";
  } catch (const IoError& err) {
    EXPECT_NE(std::string(err.what()).find(tar + ": the tar shard ends early"), std::string::npos) << err.what();
  }
  EXPECT_THROW(r.read(e.items[2], 0), IoError);  // and stays failed
  // not a tar at all: a bad input
  write(d + "/junk.tar", std::string(100, 'j'));
  const std::string err = input_error([&] { enumerate_inputs({d + "/junk.tar"}); });
  EXPECT_NE(err.find(d + "/junk.tar: cannot read the tar shard"), std::string::npos) << err;
}

// ---- records --------------------------------------------------------------------------------------

TEST(BulkRecords, CsvWriterAndReaderRoundTripHostileText) {
  const std::string d = fresh_dir();
  const std::vector<std::string> hostile = {"plain", "comma, inside", "\"quoted\" and \"\"doubled\"\"",
                                            "line\nbreak", "crlf\r\nbreak", "lone\rcr", "trailing\r",
                                            "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x98\x80", "", "\"", ",\n,"};
  const std::string path = d + "/out.csv";
  {
    RecordWriter w(path, Format::Csv, std::nullopt);
    for (std::size_t i = 0; i < hostile.size(); ++i) {
      nlohmann::ordered_json r;
      r["id"] = "id " + hostile[i] + std::to_string(i);
      r["image"] = hostile[(i + 1) % hostile.size()];
      r["prompt"] = hostile[(i + 2) % hostile.size()];
      if (i % 3 == 2) r["error"] = "bad: " + hostile[i];
      else r["text"] = hostile[i];
      w.write(r);
    }
  }
  const std::string bytes = slurp(path);
  EXPECT_EQ(bytes.rfind("\"id\",\"image\",\"prompt\",\"text\",\"error\"\r\n\"id plain0\",", 0), 0u)
      << bytes.substr(0, 60);
  EXPECT_EQ(bytes.substr(bytes.size() - 2), "\r\n");
  const RecordFile f = read_records(path, Format::Csv);
  EXPECT_FALSE(f.torn());
  ASSERT_EQ(f.records.size(), hostile.size());
  for (std::size_t i = 0; i < hostile.size(); ++i) {
    const auto& r = f.records[i];
    EXPECT_EQ(r["id"], "id " + hostile[i] + std::to_string(i));
    EXPECT_EQ(r["image"], hostile[(i + 1) % hostile.size()]);
    EXPECT_EQ(r["prompt"], hostile[(i + 2) % hostile.size()]);
    if (i % 3 == 2) {
      EXPECT_EQ(r["error"], "bad: " + hostile[i]);
      EXPECT_FALSE(r.contains("text"));
    } else {
      EXPECT_EQ(r["text"], hostile[i]);
      EXPECT_FALSE(r.contains("error"));
    }
  }
  // the JSONL writer keeps the key order and reads back the same values
  const std::string jpath = d + "/out.jsonl";
  {
    RecordWriter w(jpath, Format::Jsonl, std::nullopt);
    for (const auto& r : f.records) w.write(r);
  }
  const RecordFile j = read_records(jpath, Format::Jsonl);
  ASSERT_EQ(j.records.size(), f.records.size());
  for (std::size_t i = 0; i < j.records.size(); ++i) EXPECT_EQ(j.records[i], f.records[i]);
  EXPECT_EQ(slurp(jpath).substr(0, 7), "{\"id\":\"");
}

TEST(BulkRecords, TarRecordsBecomeCsvWithTarSlashKey) {
  nlohmann::ordered_json r;
  r["id"] = "s.tar/k";
  r["tar"] = "s.tar";
  r["key"] = "k";
  r["prompt"] = "p";
  r["text"] = "t";
  r["ms"] = 1.5;
  r["txt"] = "passed";
  EXPECT_EQ(format_record(r, Format::Csv), "\"s.tar/k\",\"s.tar/k\",\"p\",\"t\",\"\"\r\n");
  EXPECT_EQ(format_record(r, Format::Jsonl),
            "{\"id\":\"s.tar/k\",\"tar\":\"s.tar\",\"key\":\"k\",\"prompt\":\"p\",\"text\":\"t\",\"ms\":1.5,"
            "\"txt\":\"passed\"}\n");
}

TEST(BulkRecords, TornLastJsonlRecordIsDetectedAndCutOnResume) {
  const std::string d = fresh_dir();
  const std::string path = d + "/r.jsonl";
  const std::string good = "{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"error\":\"bad\"}\n";
  for (const std::string tail : {"{\"id\":\"c\",\"te", "{\"id\":\"c\",\"text\":\"done\"}", "{\"id\":\"c\",\n",
                                 "{\"text\":\"no id\"}\n"}) {
    write(path, good + tail);
    const RecordFile f = read_records(path, Format::Jsonl);
    EXPECT_EQ(f.records.size(), 2u) << tail;
    EXPECT_EQ(f.good_bytes, good.size()) << tail;
    EXPECT_TRUE(f.torn()) << tail;
    ResumeState s = resume_state(path, Format::Jsonl);
    EXPECT_EQ(s.done, (std::unordered_set<std::string>{"a", "b"}));
    EXPECT_EQ(s.torn_bytes, tail.size());
    {
      RecordWriter w(path, Format::Jsonl, s.keep_bytes);
      nlohmann::ordered_json r;
      r["id"] = "c";
      r["text"] = "again";
      w.write(r);
    }
    EXPECT_EQ(slurp(path), good + "{\"id\":\"c\",\"text\":\"again\"}\n");
    EXPECT_FALSE(read_records(path, Format::Jsonl).torn());
  }
  // a bad earlier line is not a torn tail
  write(path, "{\"id\":\"a\"}\nnot json\n{\"id\":\"b\"}\n");
  try {
    read_records(path, Format::Jsonl);
    ADD_FAILURE() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":2:"), std::string::npos) << e.what();
  }
  // the other format
  write(path, csv_header() + "\"a\",\"b\",\"c\",\"d\",\"\"\r\n");
  EXPECT_THROW(read_records(path, Format::Jsonl), FormatError);
  EXPECT_EQ(resume_state(d + "/none.jsonl", Format::Jsonl).done.size(), 0u);
}

TEST(BulkRecords, TornLastCsvRecordIsDetectedAndCutOnResume) {
  const std::string d = fresh_dir();
  const std::string path = d + "/r.csv";
  const std::string good = csv_header() + "\"a\",\"x.jpg\",\"p\",\"line\r\nbreak\",\"\"\r\n";
  for (const std::string tail : {"\"b\",\"y.jpg\",\"p\",\"half", "\"b\",\"y.jpg\",\"p\",\"t\",\"\"",
                                 "\"b\",\"y.jpg\",\"p\"\r\n"}) {
    write(path, good + tail);
    const RecordFile f = read_records(path, Format::Csv);
    ASSERT_EQ(f.records.size(), 1u) << tail;
    EXPECT_EQ(f.records[0]["text"], "line\r\nbreak");
    EXPECT_EQ(f.good_bytes, good.size()) << tail;
    ResumeState s = resume_state(path, Format::Csv);
    EXPECT_EQ(s.torn_bytes, tail.size());
    { RecordWriter w(path, Format::Csv, s.keep_bytes); }
    EXPECT_EQ(slurp(path), good);
  }
  // a torn header: nothing recorded; the header is written again with the first record
  write(path, csv_header().substr(0, 10));
  ResumeState s = resume_state(path, Format::Csv);
  EXPECT_EQ(s.keep_bytes, 0u);
  EXPECT_EQ(s.torn_bytes, 10u);
  {
    RecordWriter w(path, Format::Csv, s.keep_bytes);
    w.write(nlohmann::ordered_json{{"id", "a"}, {"image", "i"}, {"prompt", "p"}, {"text", "t"}});
  }
  EXPECT_EQ(slurp(path), csv_header() + "\"a\",\"i\",\"p\",\"t\",\"\"\r\n");
  // JSONL is not CSV; a bad record before the last is an error
  write(path, "{\"id\":\"a\"}\n");
  EXPECT_THROW(read_records(path, Format::Csv), FormatError);
  write(path, good + "\"b\",\"c\"\r\n" + "\"c\",\"y.jpg\",\"p\",\"t\",\"\"\r\n");
  try {
    read_records(path, Format::Csv);
    ADD_FAILURE() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":4:"), std::string::npos) << e.what();
  }
}

TEST(BulkRecords, OutputIsOpenedOnlyAsARegularFile) {
  const std::string d = fresh_dir();
  EXPECT_THROW(RecordWriter(d, Format::Jsonl, std::nullopt), IoError);
  EXPECT_THROW(check_writable(d), IoError);
  EXPECT_THROW(check_writable("/proc/forbidden"), IoError);
  EXPECT_THROW(resume_state(d, Format::Jsonl), IoError);
  check_writable(d + "/new.jsonl");
  EXPECT_TRUE(fs::exists(d + "/new.jsonl"));
  EXPECT_EQ(output_format("x.CSV", ""), Format::Csv);
  EXPECT_EQ(output_format("x.csv.gz", ""), Format::Jsonl);
  EXPECT_EQ(output_format("", ""), Format::Jsonl);
  EXPECT_EQ(output_format("x.csv", "jsonl"), Format::Jsonl);
  EXPECT_THROW(output_format("x", "tsv"), InvalidArgument);
}

// ---- sharding -------------------------------------------------------------------------------------

TEST(BulkShards, ShardsAreDisjointAndTheirUnionIsEverything) {
  for (std::int64_t n : {1, 2, 3, 4, 7}) {
    std::multiset<std::size_t> seen;
    for (std::int64_t i = 0; i < n; ++i) {
      const Shard s = parse_shard(std::to_string(i) + "/" + std::to_string(n));
      for (std::size_t item = 0; item < 23; ++item)
        if (s.contains(item)) seen.insert(item);
    }
    ASSERT_EQ(seen.size(), 23u) << n;
    for (std::size_t item = 0; item < 23; ++item) EXPECT_EQ(seen.count(item), 1u) << n;
  }
  for (const char* bad : {"3/3", "-1/2", "1", "a/b", "1/0", "1/2x", ""})
    EXPECT_THROW(parse_shard(bad), InvalidArgument) << bad;
}

TEST(BulkShards, FlagThenSlurmThenKubernetesThenOne) {
  std::map<std::string, std::string> env;
  auto get = [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  Shard s = resolve_shard(std::nullopt, std::nullopt, get);
  EXPECT_EQ(s.index, 0);
  EXPECT_EQ(s.count, 1);
  env = {{"JOB_COMPLETION_INDEX", "2"}};
  EXPECT_THROW(resolve_shard(std::nullopt, std::nullopt, get), InvalidArgument);  // N unknown
  s = resolve_shard(std::nullopt, 5, get);
  EXPECT_EQ(s.index, 2);
  EXPECT_EQ(s.count, 5);
  EXPECT_EQ(s.source, "JOB_COMPLETION_INDEX");
  EXPECT_THROW(resolve_shard(std::nullopt, 2, get), InvalidArgument);  // 2/2
  env["SLURM_ARRAY_TASK_ID"] = "7";
  env["SLURM_ARRAY_TASK_COUNT"] = "4";
  env["SLURM_ARRAY_TASK_MIN"] = "5";
  s = resolve_shard(std::nullopt, std::nullopt, get);  // Slurm wins over Kubernetes
  EXPECT_EQ(s.index, 2);
  EXPECT_EQ(s.count, 4);
  EXPECT_EQ(s.source, "SLURM_ARRAY_TASK_ID");
  // With --num-shards, the task id is the shard index (a task resubmitted alone: an array of one)
  env["SLURM_ARRAY_TASK_ID"] = "2";
  env["SLURM_ARRAY_TASK_COUNT"] = "1";
  env["SLURM_ARRAY_TASK_MIN"] = "2";
  s = resolve_shard(std::nullopt, 4, get);
  EXPECT_EQ(s.index, 2);
  EXPECT_EQ(s.count, 4);
  EXPECT_EQ(s.source, "SLURM_ARRAY_TASK_ID");
  EXPECT_THROW(resolve_shard(std::nullopt, 2, get), InvalidArgument);  // 2/2
  env["SLURM_ARRAY_TASK_ID"] = "7";
  env["SLURM_ARRAY_TASK_COUNT"] = "4";
  env["SLURM_ARRAY_TASK_MIN"] = "5";
  s = resolve_shard(std::string("1/3"), 5, get);  // the flag wins over both
  EXPECT_EQ(s.index, 1);
  EXPECT_EQ(s.count, 3);
  env.erase("SLURM_ARRAY_TASK_MIN");
  EXPECT_THROW(resolve_shard(std::nullopt, std::nullopt, get), InvalidArgument);  // 7/4
  env.erase("SLURM_ARRAY_TASK_COUNT");
  EXPECT_THROW(resolve_shard(std::nullopt, std::nullopt, get), InvalidArgument);
  env = {{"SLURM_ARRAY_TASK_ID", "x"}, {"SLURM_ARRAY_TASK_COUNT", "2"}};
  EXPECT_THROW(resolve_shard(std::nullopt, std::nullopt, get), InvalidArgument);
  env.clear();
  EXPECT_THROW(resolve_shard(std::nullopt, 3, get), InvalidArgument);  // --num-shards without an index

  EXPECT_EQ(shard_path("out-{shard}.jsonl", 3), "out-3.jsonl");
  EXPECT_EQ(shard_path("{shard}/x-{shard}.csv", 12), "12/x-12.csv");
  EXPECT_EQ(shard_path("plain.jsonl", 3), "plain.jsonl");
}

// ---- merge --------------------------------------------------------------------------------------

TEST(BulkMerge, CountsDuplicatesMissingAndTornParts) {
  const std::string d = fresh_dir();
  write(d + "/p0.jsonl", "{\"id\":\"a\",\"text\":\"1\"}\n{\"id\":\"b\",\"text\":\"2\"}\n{\"id\":\"c\",\"te");
  write(d + "/p1.csv",
        csv_header() + "\"b\",\"b.jpg\",\"p\",\"other\",\"\"\r\n\"d\",\"d.jpg\",\"p\",\"\",\"broken\"\r\n");
  write(d + "/p2.jsonl", "{\"id\":\"a\",\"text\":\"dup\"}\n{\"id\":\"e\",\"text\":\"5\"}\n");
  const MergeResult m = merge_records({d + "/p0.jsonl", d + "/p1.csv", d + "/p2.jsonl"},
                                      std::vector<std::string>{"a", "b", "c", "d", "e", "f"});
  EXPECT_EQ(m.files, 3u);
  ASSERT_EQ(m.records.size(), 4u);
  EXPECT_EQ(m.records[0]["text"], "1");   // first occurrence wins
  EXPECT_EQ(m.records[1]["text"], "2");
  EXPECT_EQ(m.records[2]["id"], "d");
  EXPECT_EQ(m.records[2]["error"], "broken");
  EXPECT_EQ(m.records[3]["id"], "e");
  EXPECT_EQ(m.duplicates, (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(m.missing, (std::vector<std::string>{"c", "f"}));
  ASSERT_EQ(m.torn.size(), 1u);
  EXPECT_NE(m.torn[0].find("p0.jsonl: dropped a torn last record"), std::string::npos) << m.torn[0];
  const MergeResult clean = merge_records({d + "/p2.jsonl"}, std::nullopt);
  EXPECT_TRUE(clean.duplicates.empty() && clean.missing.empty() && clean.torn.empty());
  EXPECT_EQ(clean.records.size(), 2u);
}
