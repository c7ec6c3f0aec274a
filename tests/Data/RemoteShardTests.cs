using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;
using Azure.Storage.Blobs;
using ComposerSharp.Data.Streaming;
using ComposerSharp.Storage;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Data;

/// <summary>
/// Shards streamed from real object-store servers on loopback, started by the tests: Azurite (the Azure Storage
/// emulator) and s3rver (an S3-compatible server), both npm packages that .ci/run installs into
/// ~/.cache/composersharp-npm (or COMPOSERSHARP_NODE_MODULES, or PATH); skipped with the reason where node or the
/// package is absent. The dataset reads every sample through a small cache (evictions happen), and a missing shard or
/// a server that does not answer is an error naming the URL.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
[NonParallelizable]
public sealed class RemoteShardTests
{
    // Azurite's documented development account (not a secret).
    private const string DevAccount = "devstoreaccount1";
    private const string DevKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    private string _dir = null!;
    private readonly Dictionary<string, string?> _saved = new();

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("remote-shards-").FullName;

    [TearDown]
    public void TearDown()
    {
        foreach ((string name, string? value) in _saved)
        {
            Environment.SetEnvironmentVariable(name, value);
        }

        _saved.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    [Test]
    public void ShardsStreamFromAzuriteThroughABoundedCache()
    {
        int port = FreePort();
        using Process server = Start("azurite-blob", "--blobHost", "127.0.0.1", "--blobPort", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--location", Path.Combine(_dir, "azurite"), "--silent", "--skipApiVersionCheck", "--loose");
        try
        {
            WaitForPort(port, server);
            string connection = $"DefaultEndpointsProtocol=http;AccountName={DevAccount};AccountKey={DevKey};BlobEndpoint=http://127.0.0.1:{port}/{DevAccount};";
            SetEnv("AZURE_STORAGE_CONNECTION_STRING", connection);
            var container = new BlobContainerClient(connection, "shards");
            container.Create();
            string dataset = WriteDataset();
            foreach (string file in Directory.GetFiles(dataset))
            {
                container.GetBlobClient("runs/mds/" + Path.GetFileName(file)).Upload(file);
            }

            ReadAllThroughSmallCache("azure://shards/runs/mds", dataset);

            container.GetBlobClient("runs/mds/shard.00002.mds.zstd").Delete();
            using var broken = new StreamingTextDataset(Options("azure://shards/runs/mds", Path.Combine(_dir, "cache2")));
            long first = broken.ShardSampleCounts.Take(2).Sum();
            var ex = Assert.Throws<InvalidDataException>(() => _ = broken[first]);
            TestContext.Out.WriteLine(ex!.Message);
            Assert.That(ex.Message, Does.Contain("shard.00002.mds.zstd").And.Contain("does not exist"));
        }
        finally
        {
            Stop(server);
        }
    }

    [Test]
    public void ShardsStreamFromAnS3ServerAndASilentServerIsNamed()
    {
        int port = FreePort();
        using Process server = Start("s3rver", "--directory", Path.Combine(_dir, "s3"), "--address", "127.0.0.1", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--silent", "--configure-bucket", "shards");
        try
        {
            WaitForPort(port, server);
            SetEnv("S3_ENDPOINT_URL", $"http://127.0.0.1:{port}");
            SetEnv("AWS_ACCESS_KEY_ID", "S3RVER");
            SetEnv("AWS_SECRET_ACCESS_KEY", "S3RVER");
            using var client = new AmazonS3Client(new BasicAWSCredentials("S3RVER", "S3RVER"), new AmazonS3Config { ServiceURL = $"http://127.0.0.1:{port}", ForcePathStyle = true, AuthenticationRegion = "us-east-1", RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED });
            string dataset = WriteDataset();
            foreach (string file in Directory.GetFiles(dataset))
            {
                client.PutObjectAsync(new PutObjectRequest { BucketName = "shards", Key = "mds/" + Path.GetFileName(file), FilePath = file, UseChunkEncoding = false }).GetAwaiter().GetResult();
            }

            ReadAllThroughSmallCache("s3://shards/mds", dataset);
        }
        finally
        {
            Stop(server);
        }

        // The server is gone: reading the index fails after the bounded attempts, naming the URL.
        var watch = Stopwatch.StartNew();
        var ex = Assert.Throws<IOException>(() => new StreamingTextDataset(Options("s3://shards/mds", Path.Combine(_dir, "cache3"))));
        TestContext.Out.WriteLine($"{ex!.Message} ({watch.Elapsed.TotalSeconds:F1} s)");
        Assert.That(ex.Message, Does.Contain("s3://shards/mds/index.json").And.Contain("attempt"));
    }

    private void ReadAllThroughSmallCache(string remote, string dataset)
    {
        IReadOnlyList<MdsShardInfo> shards = MdsIndex.Read(dataset);
        StreamingTextOptions options = Options(remote, Path.Combine(_dir, "cache")) with { CacheLimit = shards.Max(s => s.CacheBytes) * 3 };
        using var streamed = new StreamingTextDataset(options);
        using var local = new StreamingTextDataset(new StreamingTextOptions { Streams = new[] { new MdsStream { Local = dataset } } });
        Assert.That(streamed.Count, Is.EqualTo(local.Count));
        long[] order = Enumerable.Range(0, (int)streamed.Count).Select(i => (long)i).Reverse().ToArray();
        streamed.SetReadOrder(order);
        foreach (long i in order)
        {
            Assert.That(streamed[i], Is.EqualTo(local[i]), $"sample {i}");
        }

        (long downloads, long evictions) = streamed.CacheTraffic;
        TestContext.Out.WriteLine($"{remote}: {shards.Count} shards, {streamed.Count} samples, {downloads} downloads, {evictions} evictions");
        Assert.That(downloads, Is.GreaterThanOrEqualTo(shards.Count));
        Assert.That(evictions, Is.GreaterThan(0));
    }

    private static StreamingTextOptions Options(string remote, string cache) => new()
    {
        Streams = new[] { new MdsStream { Remote = remote, Local = cache } },
        OpenRemote = RemoteStores.Open,
        Predownload = 16,
        RemoteAttempts = 2,
    };

    private string WriteDataset()
    {
        string folder = Path.Combine(_dir, "dataset");
        using var writer = new MdsWriter(folder, new Dictionary<string, string> { ["tokens"] = "ndarray:int32" }, "zstd", new[] { "sha1" }, sizeLimit: 1500);
        var random = new Random(4);
        for (int k = 0; k < 120; k++)
        {
            writer.Write(new Dictionary<string, object> { ["tokens"] = Enumerable.Range(0, 32).Select(_ => random.Next(50000)).ToArray() });
        }

        writer.Finish();
        return folder;
    }

    private void SetEnv(string name, string value)
    {
        if (!_saved.ContainsKey(name))
        {
            _saved[name] = Environment.GetEnvironmentVariable(name);
        }

        Environment.SetEnvironmentVariable(name, value);
    }

    private static Process Start(string tool, params string[] args)
    {
        string? executable = FindTool(tool);
        if (executable is null)
        {
            Assert.Ignore($"'{tool}' was not found in $COMPOSERSHARP_NODE_MODULES/.bin, ~/.cache/composersharp-npm/node_modules/.bin or PATH; install it with `npm install --prefix ~/.cache/composersharp-npm azurite s3rver` (.ci/run does) to run this test against the real server.");
        }

        var psi = new ProcessStartInfo(executable!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        return Process.Start(psi) ?? throw new InvalidOperationException($"{executable} did not start.");
    }

    private static string? FindTool(string tool)
    {
        var folders = new List<string>();
        if (Environment.GetEnvironmentVariable("COMPOSERSHARP_NODE_MODULES") is { Length: > 0 } modules)
        {
            folders.Add(Path.Combine(modules, ".bin"));
        }

        folders.Add(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "composersharp-npm", "node_modules", ".bin"));
        folders.AddRange((Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':', StringSplitOptions.RemoveEmptyEntries));
        return folders.Select(f => Path.Combine(f, tool)).FirstOrDefault(File.Exists);
    }

    private static void WaitForPort(int port, Process server)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (server.HasExited)
            {
                Assert.Ignore($"The server exited with code {server.ExitCode} before listening: {server.StandardError.ReadToEnd()}");
            }

            try
            {
                using var client = new TcpClient();
                client.Connect(IPAddress.Loopback, port);
                return;
            }
            catch (SocketException)
            {
                Thread.Sleep(200);
            }
        }

        Assert.Fail($"The server did not listen on port {port} within 30 s.");
    }

    private static void Stop(Process server)
    {
        if (!server.HasExited)
        {
            server.Kill(entireProcessTree: true);
            server.WaitForExit(10_000);
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
