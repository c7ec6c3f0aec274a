using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Data;
using ComposerSharp.Data.Streaming;
using NUnit.Framework;

namespace ComposerSharp.Tests.Data;

/// <summary>
/// The MDS format (MosaicML Streaming's shards and index.json v2): round trips for every encoding we write, with and
/// without zstd; byte-identical rewrites; interoperability both ways with an independent Python writer and reader
/// written from the format description (tests/Data/mds_reference.py); a remote folder read through a bounded cache;
/// `prepare` giving exactly the blocks of the in-memory text dataset; and every bad input named.
/// </summary>
[TestFixture]
public sealed class MdsTests
{
    private const string Python = "/usr/bin/python3";
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("mds-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static Dictionary<string, object> Sample(int k) => new()
    {
        ["label"] = (long)((k * 7) - 30),
        ["raw"] = Enumerable.Range(0, k % 5).Select(i => (byte)i).ToArray(),
        ["text"] = $"sample {k}: café ☃",
        ["tokens"] = Enumerable.Range(0, 1 + (k % 9)).Select(j => ((k * 31) + (j * 17)) % 50000 - 5).ToArray(),
    };

    private static readonly Dictionary<string, string> Columns = new() { ["label"] = "int", ["raw"] = "bytes", ["text"] = "str", ["tokens"] = "ndarray:int32" };

    private string Write(string name, string? compression, long sizeLimit = 600, int samples = 23, IReadOnlyList<string>? hashes = null)
    {
        string folder = Path.Combine(_dir, name);
        using var writer = new MdsWriter(folder, Columns, compression, hashes ?? new[] { "sha1", "xxh64" }, sizeLimit);
        for (int k = 0; k < samples; k++)
        {
            writer.Write(Sample(k));
        }

        writer.Finish();
        return folder;
    }

    [TestCase(null)]
    [TestCase("zstd:7")]
    public void EverySampleReadsBackAsWritten(string? compression)
    {
        string folder = Write("ds", compression);
        IReadOnlyList<MdsShardInfo> shards = MdsIndex.Read(folder);
        Assert.That(shards, Has.Count.GreaterThan(2), "a small size_limit splits the data into several shards");
        Assert.That(shards.Sum(s => s.Samples), Is.EqualTo(23));
        using var dataset = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = folder } } });
        Assert.That(dataset.ShardSampleCounts, Is.EqualTo(shards.Select(s => s.Samples).ToArray()));
        for (int k = 0; k < 23; k++)
        {
            IReadOnlyDictionary<string, object> read = dataset.Columns(k);
            Dictionary<string, object> expected = Sample(k);
            Assert.That(read["label"], Is.EqualTo(expected["label"]), $"sample {k}");
            Assert.That(read["raw"], Is.EqualTo(expected["raw"]));
            Assert.That(read["text"], Is.EqualTo(expected["text"]));
            Assert.That(read["tokens"], Is.EqualTo(((int[])expected["tokens"]).Select(t => (long)t).ToArray()));
            Assert.That(dataset[k], Is.EqualTo(read["tokens"]));
        }
    }

    [Test]
    public void TheSameSamplesGiveByteIdenticalFiles()
    {
        string a = Write("a", "zstd"), b = Write("b", "zstd");
        string[] files = Directory.GetFiles(a).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;
        Assert.That(Directory.GetFiles(b).Select(Path.GetFileName).Order(StringComparer.Ordinal), Is.EqualTo(files));
        foreach (string f in files)
        {
            Assert.That(File.ReadAllBytes(Path.Combine(b, f)), Is.EqualTo(File.ReadAllBytes(Path.Combine(a, f))), f);
        }
    }

    [Test]
    public void ShardsOfTheIndependentPythonWriterAndOursAgree()
    {
        if (!File.Exists(Python))
        {
            Assert.Ignore($"{Python} is absent; the interoperability check runs tests/Data/mds_reference.py with it.");
        }

        string script = Path.Combine(TestContext.CurrentContext.TestDirectory, "Data", "mds_reference.py");
        Assert.That(File.Exists(script), Is.True, script);

        // Python writes, we read.
        string python = Path.Combine(_dir, "python");
        string[] written = Run(script, "write", python);
        using (var dataset = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = python } } }))
        {
            Assert.That(dataset.Count, Is.EqualTo(written.Length));
            Assert.That(MdsIndex.Read(python), Has.Count.GreaterThan(2));
            for (int k = 0; k < written.Length; k++)
            {
                Assert.That(Json(dataset.Columns(k)), Is.EqualTo(written[k]), $"sample {k}");
            }
        }

        // We write, Python reads (and checks the sha1 hashes).
        string ours = Write("ours", compression: null, hashes: new[] { "sha1" });
        string[] read = Run(script, "read", ours);
        Assert.That(read, Is.EqualTo(Enumerable.Range(0, 23).Select(k => Json(Sample(k))).ToArray()));
        Assert.That(read, Is.EqualTo(written), "both writers wrote the same samples");
        Assert.That(File.ReadAllBytes(Path.Combine(ours, "shard.00000.mds")), Is.EqualTo(File.ReadAllBytes(Path.Combine(python, "shard.00000.mds"))), "the same shard bytes");
    }

    [Test]
    public void ARemoteFolderIsReadThroughABoundedCacheThatEvictsTheLeastRecentlyUsedShard()
    {
        string remote = Write("remote", "zstd", sizeLimit: 400, samples: 60);
        IReadOnlyList<MdsShardInfo> shards = MdsIndex.Read(remote);
        long limit = (long)(shards.Max(s => s.CacheBytes) * 2.5);
        string cache = Path.Combine(_dir, "cache");
        using var dataset = new StreamingTextDataset(new StreamingTextOptions
        {
            Streams = new[] { new MdsStream { Local = cache, Remote = remote } },
            CacheLimit = limit,
            Predownload = 8,
        });
        long[] order = Enumerable.Range(0, 60).Select(i => (long)i).ToArray();
        dataset.SetReadOrder(order);
        long peak = 0;
        foreach (long i in order)
        {
            Assert.That(dataset[i], Is.EqualTo(((int[])Sample((int)i)["tokens"]).Select(t => (long)t).ToArray()));
            peak = Math.Max(peak, CacheBytes(cache));
        }

        (long downloads, long evictions) = dataset.CacheTraffic;
        TestContext.Out.WriteLine($"{shards.Count} shards, cache limit {limit} B, peak cache {peak} B, {downloads} downloads, {evictions} evictions");
        Assert.That(downloads, Is.GreaterThanOrEqualTo(shards.Count));
        Assert.That(evictions, Is.GreaterThan(0));
        Assert.That(peak, Is.LessThanOrEqualTo(limit + shards.Max(s => s.CacheBytes)), "the cache stays within its limit (plus the shard being fetched)");
    }

    [Test]
    public void BadInputsAreNamed()
    {
        string empty = Directory.CreateDirectory(Path.Combine(_dir, "empty")).FullName;
        var missing = Assert.Throws<FileNotFoundException>(() => MdsIndex.Read(empty));
        Assert.That(missing!.Message, Does.Contain("index.json"));

        string malformed = Directory.CreateDirectory(Path.Combine(_dir, "malformed")).FullName;
        File.WriteAllText(Path.Combine(malformed, "index.json"), "{\"version\": 2, \"shards\": [");
        Assert.That(Assert.Throws<InvalidDataException>(() => MdsIndex.Read(malformed))!.Message, Does.Contain("not valid JSON"));

        string unknown = Write("unknown", null);
        string index = File.ReadAllText(Path.Combine(unknown, "index.json")).Replace("\"ndarray:int32\"", "\"pkl\"", StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(unknown, "index.json"), index);
        Assert.That(Assert.Throws<InvalidDataException>(() => MdsIndex.Read(unknown))!.Message, Does.Contain("'pkl'").And.Contain("shard 0"));

        string truncated = Write("truncated", null);
        string shard = Path.Combine(truncated, "shard.00001.mds");
        File.WriteAllBytes(shard, File.ReadAllBytes(shard)[..^3]);
        using (var dataset = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = truncated } } }))
        {
            long first = dataset.ShardSampleCounts[0];
            Assert.That(dataset[0], Is.Not.Empty, "shard 0 is intact");
            var ex = Assert.Throws<InvalidDataException>(() => _ = dataset[first]);
            Assert.That(ex!.Message, Does.Contain("shard.00001.mds"));
        }

        string corrupt = Write("corrupt", null);
        byte[] bytes = File.ReadAllBytes(Path.Combine(corrupt, "shard.00000.mds"));
        bytes[^1] ^= 0x55;
        File.WriteAllBytes(Path.Combine(corrupt, "shard.00000.mds"), bytes);
        using (var dataset = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = Path.Combine(_dir, "corrupt-cache"), Remote = corrupt } } }))
        {
            var ex = Assert.Throws<InvalidDataException>(() => _ = dataset[0]);
            Assert.That(ex!.Message, Does.Contain("sha1 check").And.Contain("shard.00000.mds"));
            Assert.That(File.Exists(Path.Combine(_dir, "corrupt-cache", "shard.00000.mds")), Is.False, "a corrupt shard never lands in the cache");
        }

        string ok = Write("ok", null, samples: 5);
        using (var dataset = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = ok } }, VocabSize = 30 }))
        {
            var ex = Assert.Throws<InvalidDataException>(() => _ = dataset[1]);
            Assert.That(ex!.Message, Does.Contain("outside the model's vocabulary").And.Contain("sample 1"));
        }

        var small = Assert.Throws<InvalidDataException>(() => new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = Path.Combine(_dir, "c2"), Remote = ok } }, CacheLimit = 10 }));
        Assert.That(small!.Message, Does.Contain("cache_limit is 10 bytes"));
        var cloud = Assert.Throws<NotSupportedException>(() => new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = Path.Combine(_dir, "c3"), Remote = "s3://bucket/data" } } }));
        Assert.That(cloud!.Message, Does.Contain("s3://"));
    }

    [Test]
    public void PrepareGivesTheInMemoryDatasetsBlocksAndTheSameFilesTwice()
    {
        string corpus = Directory.CreateDirectory(Path.Combine(_dir, "corpus")).FullName;
        var random = new Random(3);
        string[] words = { "whale", "sea", "ship", "captain", "harpoon", "the", "a", "of", "and", "Ishmael", "storm", "deck" };
        for (int f = 0; f < 12; f++)
        {
            File.WriteAllText(Path.Combine(corpus, $"chapter-{f + 1}.txt"), string.Join(" ", Enumerable.Range(0, 40 + random.Next(200)).Select(_ => words[random.Next(words.Length)])) + ".");
        }

        var tokenizer = new Gpt2Tokenizer();
        const int Block = 32;
        var progress = new List<MdsPrepareProgress>();
        MdsPrepareResult result = MdsPrepare.TextBlocks(
            new MdsPrepareOptions { Inputs = new[] { corpus }, Output = Path.Combine(_dir, "prepared"), BlockSize = Block, Compression = "zstd", SizeLimit = 2000 },
            tokenizer, new Progress<MdsPrepareProgress>(progress.Add));
        TextBlockDataset memory = TextBlockDataset.Load(new TextCorpusOptions { Path = corpus, BlockSize = Block }, tokenizer);
        using var streamed = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = result.Output } }, VocabSize = tokenizer.Vocabulary.Size });
        TestContext.Out.WriteLine($"{result.Documents} documents, {result.Tokens} tokens, {result.Samples} blocks in {result.Shards} shards");
        Assert.That(result.Shards, Is.GreaterThan(1));
        Assert.That(streamed.Count, Is.EqualTo(memory.Count));
        for (long i = 0; i < memory.Count; i++)
        {
            Assert.That(streamed[i], Is.EqualTo(memory[i]), $"block {i}");
        }

        MdsPrepareResult again = MdsPrepare.TextBlocks(
            new MdsPrepareOptions { Inputs = new[] { corpus }, Output = Path.Combine(_dir, "again"), BlockSize = Block, Compression = "zstd", SizeLimit = 2000, Workers = 1 }, tokenizer);
        Assert.That(Directory.GetFiles(again.Output).Select(Path.GetFileName), Has.Some.EndsWith(".mds.zstd").And.None.EndsWith(".mds"), "compressed shards only (a reader decompresses beside them)");
        foreach (string f in Directory.GetFiles(again.Output).Select(Path.GetFileName)!)
        {
            Assert.That(File.ReadAllBytes(Path.Combine(again.Output, f!)), Is.EqualTo(File.ReadAllBytes(Path.Combine(result.Output, f!))), $"{f} (2 workers vs 1)");
        }

        var exists = Assert.Throws<IOException>(() => MdsPrepare.TextBlocks(new MdsPrepareOptions { Inputs = new[] { corpus }, Output = result.Output }, tokenizer));
        Assert.That(exists!.Message, Does.Contain("not an empty folder"));
        string bad = Path.Combine(_dir, "bad.jsonl");
        File.WriteAllLines(bad, new[] { "{\"text\": \"fine\"}", "{\"text\": 3}" });
        var row = Assert.Throws<InvalidDataException>(() => MdsPrepare.TextBlocks(new MdsPrepareOptions { Inputs = new[] { bad }, Output = Path.Combine(_dir, "bad-out"), BlockSize = 2 }, tokenizer));
        Assert.That(row!.Message, Does.Contain("line 2"));
        Assert.That(Directory.Exists(Path.Combine(_dir, "bad-out")), Is.False, "nothing is left at the output");
        Assert.That(Directory.GetDirectories(_dir, "*.tmp-*"), Is.Empty, "no staging folder is left");
    }

    // Bytes of the shard files in a cache folder, tolerating a file evicted while it is listed.
    private static long CacheBytes(string folder)
    {
        long total = 0;
        foreach (FileInfo f in new DirectoryInfo(folder).EnumerateFiles("shard.*"))
        {
            try
            {
                total += f.Length;
            }
            catch (FileNotFoundException)
            {
            }
        }

        return total;
    }

    private static string Json(IReadOnlyDictionary<string, object> sample)
    {
        var o = new JsonObject();
        foreach ((string key, object value) in sample.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            o[key] = value switch
            {
                byte[] b => Convert.ToHexStringLower(b),
                int[] a => new JsonArray(a.Select(x => (JsonNode?)(long)x).ToArray()),
                long[] a => new JsonArray(a.Select(x => (JsonNode?)x).ToArray()),
                string s => s,
                long l => l,
                _ => throw new InvalidOperationException(value.GetType().Name),
            };
        }

        return PythonJsonText(o);
    }

    // Python's json.dumps(sort_keys=True) spacing and ASCII escapes, to compare lines with the script's output.
    private static string PythonJsonText(JsonObject o) =>
        (string)typeof(MdsWriter).Assembly.GetType("ComposerSharp.Data.Streaming.PythonJson")!.GetMethod("Dumps")!.Invoke(null, new object[] { o })!;

    private static string[] Run(string script, string command, string folder)
    {
        var psi = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { script, command, folder })
        {
            psi.ArgumentList.Add(a);
        }

        using Process p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, error);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }
}
