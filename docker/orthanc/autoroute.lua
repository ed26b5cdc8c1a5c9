-- Auto-routing from Orthanc to the n2d-dicom node: every series that becomes stable is sent to
-- the modality "n2d" (orthanc.json), except the derived series the node sends back, which would
-- otherwise be denoised again, and again.
--
-- A series is the node's own when its first instance carries the node's private block (creator
-- "N2D_DICOM 1" in group 0011), or, should something between the node and Orthanc have removed
-- private tags, when its Image Type is DERIVED and its Series Description ends with " [N2D]" (the
-- node's series_description_suffix). Both tests, not either alone: a scanner's own DERIVED series
-- (reformats, MIPs) are still sent.

local NODE = 'n2d'
local PRIVATE_CREATOR = 'N2D_DICOM 1'
local SUFFIX = ' [N2D]'

-- A tag's value without DICOM's padding; '' for what is not a string (a sequence, a long value).
local function trim(value)
  if type(value) ~= 'string' then
    return ''
  end
  return (string.gsub(string.gsub(value, '^%s+', ''), '%s+$', ''))
end

local function carries_node_block(tags)
  for tag, value in pairs(tags) do
    -- Private creators of group 0011 are the elements (0011,0010) to (0011,00FF).
    if string.match(string.upper(tag), '^0011,00[1-9A-F][0-9A-F]$') and trim(value) == PRIVATE_CREATOR then
      return true
    end
  end
  return false
end

local function derived_by_node(seriesId, seriesTags)
  local instances = ParseJson(RestApiGet('/series/' .. seriesId)).Instances
  local tags = ParseJson(RestApiGet('/instances/' .. instances[1] .. '/tags?short'))
  if carries_node_block(tags) then
    return true
  end
  local imageType = trim(tags['0008,0008'])
  -- Compared without spaces at either end, which DICOM does not count: a source without a
  -- description gives the derived description ' [N2D]', and Orthanc may keep it as '[N2D]'.
  local description = trim(seriesTags['SeriesDescription'])
  local suffix = trim(SUFFIX)
  return string.match(imageType, '^[^\\]*') == 'DERIVED'
    and string.sub(description, -string.len(suffix)) == suffix
end

function OnStableSeries(seriesId, tags, metadata)
  if derived_by_node(seriesId, tags) then
    print('n2d autoroute: series ' .. seriesId .. ' was derived by the node, not sent')
    return
  end
  -- An asynchronous job: Orthanc keeps calling back for other series while this one is sent;
  -- a failed send stays in /jobs, where POST /jobs/<id>/resubmit retries it.
  local job = ParseJson(RestApiPost('/modalities/' .. NODE .. '/store',
    DumpJson({ Resources = { seriesId }, Asynchronous = true }, true)))
  print('n2d autoroute: series ' .. seriesId .. ' sent to ' .. NODE .. ' (job ' .. job.ID .. ')')
end
