namespace ComposerSharp.Data.Streaming;

/// <summary>
/// Where a stream's shards live (MosaicML Streaming's <c>remote</c>): a folder, or an object store through its
/// official SDK (the <c>ComposerSharp.Storage</c> assembly: Azure Blob Storage, S3). The streaming datasets copy
/// <c>index.json</c> and shards from it into the stream's local cache. Implementations are thread-safe.
/// </summary>
public interface IShardStore
{
    /// <summary>The remote as the user wrote it (for messages), e.g. <c>s3://bucket/prefix</c>.</summary>
    string Remote { get; }

    /// <summary>The full location of <paramref name="name"/> (for messages), e.g. <c>s3://bucket/prefix/shard.00000.mds</c>.</summary>
    /// <param name="name">A file name of the dataset (index.json or a shard).</param>
    /// <returns>Its URL or path.</returns>
    string Locate(string name);

    /// <summary>Reads the whole file <paramref name="name"/>.</summary>
    /// <param name="name">A file name of the dataset.</param>
    /// <returns>Its bytes.</returns>
    /// <exception cref="FileNotFoundException">The store has no such file.</exception>
    /// <exception cref="IOException">The store did not answer or failed (retried by the caller a bounded number of times).</exception>
    byte[] Read(string name);
}

/// <summary>A folder (or <c>file://</c> URL) as a remote: shards are copied from it into the local cache.</summary>
public sealed class FolderShardStore : IShardStore
{
    private readonly string _folder;

    /// <summary>Opens <paramref name="remote"/>.</summary>
    /// <param name="remote">A folder path or <c>file://</c> URL.</param>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    public FolderShardStore(string remote)
    {
        ArgumentException.ThrowIfNullOrEmpty(remote);
        Remote = remote;
        _folder = remote.StartsWith("file://", StringComparison.Ordinal) ? new Uri(remote).LocalPath : remote;
        if (!Directory.Exists(_folder))
        {
            throw new DirectoryNotFoundException($"The remote folder '{remote}' (full path '{Path.GetFullPath(_folder)}') does not exist.");
        }
    }

    /// <inheritdoc/>
    public string Remote { get; }

    /// <inheritdoc/>
    public string Locate(string name) => Path.Combine(_folder, name);

    /// <inheritdoc/>
    public byte[] Read(string name) => File.ReadAllBytes(Locate(name));
}
