namespace ComposerSharp.Data;

/// <summary>Options of <see cref="SyntheticTokenDataset"/>.</summary>
public sealed record SyntheticTokenOptions
{
    /// <summary>Number of samples.</summary>
    public int NumSamples { get; init; } = 4096;

    /// <summary>Tokens per sample (T).</summary>
    public int SequenceLength { get; init; } = 128;

    /// <summary>
    /// Number of regular token ids; the vocabulary is this plus four specials (<see cref="TokenVocabulary"/>), so a
    /// model needs VocabSize ≥ RegularVocabSize + 4 (576, a multiple of 64, for the default 512).
    /// </summary>
    public int RegularVocabSize { get; init; } = 512;

    /// <summary>Possible successors of each token in the generating Markov chain (smaller is easier to learn; 1 is deterministic).</summary>
    public int Branching { get; init; } = 2;

    /// <summary>
    /// Generator index of sample 0: sample i is generated from (Seed, FirstIndex + i). A held-out split uses the same
    /// seed (so the same generating process) and a FirstIndex past the training samples, so that no sample is shared.
    /// </summary>
    public long FirstIndex { get; init; }

    /// <summary>Seed of the chain and of the samples.</summary>
    public long Seed { get; init; }
}

/// <summary>
/// Synthetic token sequences for MLM and causal-LM tests and the default run (the role Composer's synthetic BERT data
/// plays in its docs). Each sample is a walk of a random sparse Markov chain: every regular token has
/// <see cref="SyntheticTokenOptions.Branching"/> possible successors, chosen from the seed; a walk starts at a random
/// token and picks uniformly among the successors at each step. Unlike uniform random tokens, the sequences have
/// structure a model can learn (a masked token is predictable from its neighbours), so loss decreases. Samples are
/// generated on access from (seed, index): nothing is stored, and the same index always gives the same
/// <c>long[]</c> of <see cref="SyntheticTokenOptions.SequenceLength"/> ids in [0, RegularVocabSize).
/// </summary>
public sealed class SyntheticTokenDataset : IDataset<long[]>
{
    private readonly SyntheticTokenOptions _options;

    /// <summary>Creates the dataset.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive, or Branching exceeds RegularVocabSize.</exception>
    public SyntheticTokenDataset(SyntheticTokenOptions? options = null)
    {
        _options = options ?? new SyntheticTokenOptions();
        Require(_options.NumSamples >= 1, nameof(SyntheticTokenOptions.NumSamples), _options.NumSamples, "at least 1");
        Require(_options.SequenceLength >= 1, nameof(SyntheticTokenOptions.SequenceLength), _options.SequenceLength, "at least 1");
        Require(_options.RegularVocabSize >= 1, nameof(SyntheticTokenOptions.RegularVocabSize), _options.RegularVocabSize, "at least 1");
        Require(
            _options.Branching >= 1 && _options.Branching <= _options.RegularVocabSize,
            nameof(SyntheticTokenOptions.Branching),
            _options.Branching,
            $"in [1, RegularVocabSize = {_options.RegularVocabSize}]");
        Vocabulary = new TokenVocabulary(_options.RegularVocabSize);
    }

    /// <inheritdoc/>
    public long Count => _options.NumSamples;

    /// <summary>The id layout: RegularVocabSize regular ids and four specials.</summary>
    public TokenVocabulary Vocabulary { get; }

    /// <inheritdoc/>
    public long[] this[long index]
    {
        get
        {
            if (index < 0 || index >= Count)
            {
                throw new ArgumentOutOfRangeException(nameof(index), index, $"Index must be in [0, {Count}).");
            }

            var rng = SplitMix64.For(_options.Seed, _options.FirstIndex + index);
            var sample = new long[_options.SequenceLength];
            int token = rng.NextInt(_options.RegularVocabSize);
            for (int t = 0; t < sample.Length; t++)
            {
                sample[t] = token;
                token = Successor(token, rng.NextInt(_options.Branching));
            }

            return sample;
        }
    }

    /// <summary>The <paramref name="choice"/>-th possible successor of <paramref name="token"/> (a pure function of the seed).</summary>
    private int Successor(int token, int choice) =>
        SplitMix64.For(_options.Seed, -1, token, choice).NextInt(_options.RegularVocabSize);

    internal static void Require(bool ok, string name, object value, string expected)
    {
        if (!ok)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be {expected}.");
        }
    }
}

/// <summary>Options of <see cref="SyntheticClassificationDataset"/>.</summary>
public sealed record SyntheticClassificationOptions
{
    /// <summary>Number of samples.</summary>
    public int NumSamples { get; init; } = 512;

    /// <summary>Shortest sample in tokens (including the cls id).</summary>
    public int MinLength { get; init; } = 16;

    /// <summary>Longest sample in tokens (including the cls id); pad batches to this.</summary>
    public int MaxLength { get; init; } = 64;

    /// <summary>Number of classes.</summary>
    public int NumClasses { get; init; } = 2;

    /// <summary>Number of regular token ids.</summary>
    public int RegularVocabSize { get; init; } = 1024;

    /// <summary>Keyword ids reserved for each class.</summary>
    public int KeywordsPerClass { get; init; } = 8;

    /// <summary>Keywords of its class placed in each sample.</summary>
    public int KeywordsPerSample { get; init; } = 3;

    /// <summary>
    /// Generator index of sample 0: sample i is generated from (Seed, FirstIndex + i). A held-out split uses the same
    /// seed (so the same generating process) and a FirstIndex past the training samples, so that no sample is shared.
    /// </summary>
    public long FirstIndex { get; init; }

    /// <summary>Seed of the labels, lengths, noise and keyword positions.</summary>
    public long Seed { get; init; }
}

/// <summary>
/// Synthetic text classification for tests: sample i gets a uniformly random class c and length in
/// [MinLength, MaxLength]; it starts with the cls id, its other tokens are noise drawn uniformly from the non-keyword
/// ids, and <see cref="SyntheticClassificationOptions.KeywordsPerSample"/> of them (at random positions) are
/// replaced by keywords of class c (ids c·K … c·K+K−1 for K keywords per class). The class is therefore learnable
/// from which keywords occur. Generated on access from (seed, index).
/// </summary>
public sealed class SyntheticClassificationDataset : IDataset<TextClassificationSample>
{
    private readonly SyntheticClassificationOptions _options;

    /// <summary>Creates the dataset.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is out of range (the message names the option and the expected range).</exception>
    public SyntheticClassificationDataset(SyntheticClassificationOptions? options = null)
    {
        _options = options ?? new SyntheticClassificationOptions();
        SyntheticTokenDataset.Require(_options.NumSamples >= 1, nameof(SyntheticClassificationOptions.NumSamples), _options.NumSamples, "at least 1");
        SyntheticTokenDataset.Require(_options.NumClasses >= 2, nameof(SyntheticClassificationOptions.NumClasses), _options.NumClasses, "at least 2");
        SyntheticTokenDataset.Require(_options.KeywordsPerClass >= 1, nameof(SyntheticClassificationOptions.KeywordsPerClass), _options.KeywordsPerClass, "at least 1");
        SyntheticTokenDataset.Require(
            _options.KeywordsPerSample >= 1, nameof(SyntheticClassificationOptions.KeywordsPerSample), _options.KeywordsPerSample, "at least 1");
        SyntheticTokenDataset.Require(
            _options.MinLength > _options.KeywordsPerSample,
            nameof(SyntheticClassificationOptions.MinLength),
            _options.MinLength,
            $"more than KeywordsPerSample = {_options.KeywordsPerSample} (one position holds the cls id)");
        SyntheticTokenDataset.Require(
            _options.MaxLength >= _options.MinLength, nameof(SyntheticClassificationOptions.MaxLength), _options.MaxLength, $"at least MinLength = {_options.MinLength}");
        int keywords = _options.NumClasses * _options.KeywordsPerClass;
        SyntheticTokenDataset.Require(
            _options.RegularVocabSize > keywords,
            nameof(SyntheticClassificationOptions.RegularVocabSize),
            _options.RegularVocabSize,
            $"more than NumClasses × KeywordsPerClass = {keywords}");
        Vocabulary = new TokenVocabulary(_options.RegularVocabSize);
    }

    /// <inheritdoc/>
    public long Count => _options.NumSamples;

    /// <summary>Number of classes.</summary>
    public int NumClasses => _options.NumClasses;

    /// <summary>Longest sample in tokens.</summary>
    public int MaxLength => _options.MaxLength;

    /// <summary>The id layout.</summary>
    public TokenVocabulary Vocabulary { get; }

    /// <inheritdoc/>
    public TextClassificationSample this[long index]
    {
        get
        {
            if (index < 0 || index >= Count)
            {
                throw new ArgumentOutOfRangeException(nameof(index), index, $"Index must be in [0, {Count}).");
            }

            var rng = SplitMix64.For(_options.Seed, _options.FirstIndex + index);
            int label = rng.NextInt(_options.NumClasses);
            int length = _options.MinLength + rng.NextInt(_options.MaxLength - _options.MinLength + 1);
            int keywords = _options.NumClasses * _options.KeywordsPerClass;
            var ids = new long[length];
            ids[0] = Vocabulary.ClsId;
            for (int t = 1; t < length; t++)
            {
                ids[t] = keywords + rng.NextInt(_options.RegularVocabSize - keywords);
            }

            for (int k = 0; k < _options.KeywordsPerSample; k++)
            {
                ids[1 + rng.NextInt(length - 1)] = label * _options.KeywordsPerClass + rng.NextInt(_options.KeywordsPerClass);
            }

            return new TextClassificationSample(ids, label);
        }
    }
}
