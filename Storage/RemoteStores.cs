using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;
using Azure;
using Azure.Storage.Blobs;
using ComposerSharp.Data.Streaming;

namespace ComposerSharp.Storage;

/// <summary>
/// Opens object-store remotes by MosaicML Streaming's URL schemes, with credentials and endpoints from the
/// environment variables Streaming and the SDKs read:
/// <list type="bullet">
/// <item><c>azure://CONTAINER/PREFIX</c> (also <c>az://</c>): Azure Blob Storage through Azure.Storage.Blobs;
/// <c>AZURE_STORAGE_CONNECTION_STRING</c>, else <c>AZURE_ACCOUNT_NAME</c> + <c>AZURE_ACCOUNT_ACCESS_KEY</c>
/// (Streaming's names).</item>
/// <item><c>s3://BUCKET/PREFIX</c>: Amazon S3 or an S3-compatible server through AWSSDK.S3; <c>S3_ENDPOINT_URL</c>
/// (Streaming's name; path-style addressing then), <c>AWS_ACCESS_KEY_ID</c>, <c>AWS_SECRET_ACCESS_KEY</c>,
/// <c>AWS_REGION</c> (default us-east-1).</item>
/// </list>
/// Each store retries a failed request twice itself (the SDKs' retry policies, 10 s timeout per try); the dataset
/// adds its own bounded attempts and then reports the file and URL.
/// </summary>
public static class RemoteStores
{
    /// <summary>Opens <paramref name="remote"/>; folders and <c>file://</c> URLs open as <see cref="FolderShardStore"/>.</summary>
    /// <param name="remote">The remote URL or folder.</param>
    /// <returns>The store.</returns>
    /// <exception cref="NotSupportedException">Another scheme (e.g. <c>gs://</c>, <c>oci://</c>): named with the supported ones.</exception>
    /// <exception cref="InvalidOperationException">The credentials the scheme needs are not set (the variables named).</exception>
    public static IShardStore Open(string remote)
    {
        ArgumentException.ThrowIfNullOrEmpty(remote);
        int scheme = remote.IndexOf("://", StringComparison.Ordinal);
        if (scheme <= 0 || remote.StartsWith("file://", StringComparison.Ordinal))
        {
            return new FolderShardStore(remote);
        }

        (string container, string prefix) = Split(remote, scheme);
        return remote[..scheme] switch
        {
            "azure" or "az" => new AzureBlobShardStore(remote, container, prefix),
            "s3" => new S3ShardStore(remote, container, prefix),
            string other => throw new NotSupportedException($"remote '{remote}': the scheme {other}:// is not supported; supported: a folder, file://, azure:// (az://) and s3://."),
        };
    }

    private static (string Container, string Prefix) Split(string remote, int scheme)
    {
        string rest = remote[(scheme + 3)..].Trim('/');
        int slash = rest.IndexOf('/', StringComparison.Ordinal);
        string container = slash < 0 ? rest : rest[..slash];
        if (container.Length == 0)
        {
            throw new ArgumentException($"remote '{remote}' names no bucket or container; expected {remote[..scheme]}://NAME/PREFIX.", nameof(remote));
        }

        return (container, slash < 0 ? string.Empty : rest[(slash + 1)..]);
    }

    internal static string Key(string prefix, string name) => prefix.Length == 0 ? name : prefix + "/" + name;
}

/// <summary>An Azure Blob Storage container (and prefix) as a remote (see <see cref="RemoteStores"/>).</summary>
public sealed class AzureBlobShardStore : IShardStore
{
    private readonly BlobContainerClient _container;
    private readonly string _prefix;

    /// <summary>Connects to <paramref name="container"/> with the environment's credentials.</summary>
    /// <param name="remote">The URL as given.</param>
    /// <param name="container">The container name.</param>
    /// <param name="prefix">The path prefix inside it (may be empty).</param>
    /// <exception cref="InvalidOperationException">No credentials in the environment.</exception>
    public AzureBlobShardStore(string remote, string container, string prefix)
    {
        Remote = remote;
        _prefix = prefix;
        var options = new BlobClientOptions();
        options.Retry.MaxRetries = 2;
        options.Retry.NetworkTimeout = TimeSpan.FromSeconds(10);
        options.Retry.Delay = TimeSpan.FromMilliseconds(200);
        string? connection = Environment.GetEnvironmentVariable("AZURE_STORAGE_CONNECTION_STRING");
        string? account = Environment.GetEnvironmentVariable("AZURE_ACCOUNT_NAME");
        string? key = Environment.GetEnvironmentVariable("AZURE_ACCOUNT_ACCESS_KEY");
        BlobServiceClient service = connection is { Length: > 0 }
            ? new BlobServiceClient(connection, options)
            : account is { Length: > 0 } && key is { Length: > 0 }
                ? new BlobServiceClient(new Uri($"https://{account}.blob.core.windows.net"), new Azure.Storage.StorageSharedKeyCredential(account, key), options)
                : throw new InvalidOperationException($"remote '{remote}': set AZURE_STORAGE_CONNECTION_STRING, or AZURE_ACCOUNT_NAME and AZURE_ACCOUNT_ACCESS_KEY.");
        _container = service.GetBlobContainerClient(container);
    }

    /// <inheritdoc/>
    public string Remote { get; }

    /// <inheritdoc/>
    public string Locate(string name) => $"{_container.Uri.AbsoluteUri.TrimEnd('/')}/{RemoteStores.Key(_prefix, name)}";

    /// <inheritdoc/>
    public byte[] Read(string name)
    {
        try
        {
            return _container.GetBlobClient(RemoteStores.Key(_prefix, name)).DownloadContent().Value.Content.ToArray();
        }
        catch (RequestFailedException ex) when (ex.Status == 404)
        {
            throw new FileNotFoundException($"'{Locate(name)}' does not exist ({ex.ErrorCode}).", name, ex);
        }
        catch (Exception ex) when (ex is RequestFailedException or HttpRequestException or TaskCanceledException or AggregateException)
        {
            throw new IOException($"Azure Blob Storage did not deliver '{Locate(name)}': {ex.Message.Split('\n')[0]}", ex);
        }
    }
}

/// <summary>An S3 bucket (and prefix) as a remote, Amazon or S3-compatible (see <see cref="RemoteStores"/>).</summary>
public sealed class S3ShardStore : IShardStore
{
    private readonly AmazonS3Client _client;
    private readonly string _bucket;
    private readonly string _prefix;

    /// <summary>Connects with the environment's endpoint and credentials.</summary>
    /// <param name="remote">The URL as given.</param>
    /// <param name="bucket">The bucket.</param>
    /// <param name="prefix">The key prefix (may be empty).</param>
    public S3ShardStore(string remote, string bucket, string prefix)
    {
        Remote = remote;
        _bucket = bucket;
        _prefix = prefix;
        var config = new AmazonS3Config
        {
            MaxErrorRetry = 2,
            Timeout = TimeSpan.FromSeconds(10),
            AuthenticationRegion = Environment.GetEnvironmentVariable("AWS_REGION") ?? "us-east-1",
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED, // the index's own hashes check each shard
        };
        if (Environment.GetEnvironmentVariable("S3_ENDPOINT_URL") is { Length: > 0 } endpoint)
        {
            config.ServiceURL = endpoint;
            config.ForcePathStyle = true;
        }
        else
        {
            config.RegionEndpoint = Amazon.RegionEndpoint.GetBySystemName(config.AuthenticationRegion);
        }

        string? id = Environment.GetEnvironmentVariable("AWS_ACCESS_KEY_ID");
        string? secret = Environment.GetEnvironmentVariable("AWS_SECRET_ACCESS_KEY");
        _client = id is { Length: > 0 } && secret is { Length: > 0 } ? new AmazonS3Client(new BasicAWSCredentials(id, secret), config) : new AmazonS3Client(config);
    }

    /// <inheritdoc/>
    public string Remote { get; }

    /// <inheritdoc/>
    public string Locate(string name) => $"s3://{_bucket}/{RemoteStores.Key(_prefix, name)}";

    /// <inheritdoc/>
    public byte[] Read(string name)
    {
        try
        {
            using GetObjectResponse response = _client.GetObjectAsync(_bucket, RemoteStores.Key(_prefix, name)).GetAwaiter().GetResult();
            using var buffer = new MemoryStream();
            response.ResponseStream.CopyTo(buffer);
            return buffer.ToArray();
        }
        catch (AmazonS3Exception ex) when (ex.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            throw new FileNotFoundException($"'{Locate(name)}' does not exist ({ex.ErrorCode}).", name, ex);
        }
        catch (Exception ex) when (ex is AmazonServiceException or AmazonClientException or HttpRequestException or TaskCanceledException)
        {
            throw new IOException($"S3 did not deliver '{Locate(name)}': {ex.Message.Split('\n')[0]}", ex);
        }
    }
}
